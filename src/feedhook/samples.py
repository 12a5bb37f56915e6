"""One example event of each shape each source kind sends, from the vendors' own pages,
normalized as the real feeds would be: what `feedhook check` tries each subscription's
filter against before any real event arrives."""

from __future__ import annotations

from feedhook.envelope import Envelope

_SEQUENCE = (
    {
        "resource_type": "event",
        "id": 40393,
        "event_type": "job_created",
        "timestamp": "2012-12-03T09:35:37+00:00",
        "self_link": "https://sequence.bebanjo.net/api/events/40393",
        "subject_link": "https://sequence.bebanjo.net/api/work_areas/85/jobs/97185",
    },
    {
        "resource_type": "event",
        "id": 40397,
        "event_type": "asset_updated",
        "timestamp": "2014-07-27T11:04:10.000-07:00",
        "changes": "status,name",
        "self_link": "https://sequence.bebanjo.net/api/events/40397",
        "subject_link": "https://sequence.bebanjo.net/api/work_areas/85/jobs/97185/assets/467237",
    },
    {
        "resource_type": "event",
        "id": 40401,
        "event_type": "task_deleted",
        "timestamp": "2012-12-04T14:46:55+00:00",
        "self_link": "https://sequence.bebanjo.net/api/events/40401",
        "subject_link": "https://sequence.bebanjo.net/api/work_areas/85/jobs/97144/tasks/3030",
    },
)

_MOVIDA = b"""<?xml version="1.0" encoding="UTF-8"?>
<events type="array">
  <event>
    <id type="integer">12</id>
    <event-type>title_metadata_updated</event-type>
    <timestamp type="datetime">2013-08-14T17:40:01+02:00</timestamp>
    <changes>actor,director,first-tx-starts</changes>
    <link rel="self" href="https://movida.bebanjo.net/api/events/12"/>
    <link rel="subject" href="https://movida.bebanjo.net/api/titles/59977"/>
  </event>
</events>
"""

_TEAMHUB = (
    {
        "id": "50883cfe1229c02952000036",
        "created_at": "2012-10-24T19:09:50Z",
        "updated_at": "2012-10-24T19:09:50Z",
        "subject": {"id": "assimov"},
        "operation": "created",
        "target": "push",
        "progress": 100,
        "objects": {
            "project": {"id": "luotsi"},
            "repository": {"id": "devrel"},
            "commits": [{"id": "393fe81b0f6c39f3006f748f5b16cdddcbe01c80"}],
            "last_commit": "393fe81b0f6c39f3006f748f5b16cdddcbe01c80",
            "commit_count": 2,
            "ref": "master",
        },
        "timestamp": "2012-10-24T19:09:50Z",
    },
)

_MODULO = (
    {
        "Action": 13,
        "AdditionalParameter": "",
        "AttachmentId": None,
        "ChildEventCode": None,
        "Comment": "",
        "Date": "/Date(1317053182737-0300)/",
        "Id": "21b688eb-587e-4fc3-a43e-3661f707fd9f",
        "NewValue": "9/26/2011 12:00 AM",
        "OldValue": None,
        "Property": "StartDate",
        "UpdateType": 0,
        "UpdatedBy": "administrator",
    },
    {
        "Action": 5,
        "AdditionalParameter": "",
        "AttachmentId": None,
        "ChildEventCode": None,
        "Comment": "Comment",
        "Date": "/Date(1317045356363-0300)/",
        "Id": "5ac2c5f3-d916-4ab8-a31a-3c1d5bf3b35b",
        "NewValue": "55",
        "OldValue": "0",
        "Property": "Progress",
        "UpdateType": 2,
        "UpdatedBy": "coordinator",
    },
)


def sample_envelopes(source_name: str, kind: str, url: str) -> list[Envelope]:
    """The examples of `kind` as envelopes from a source called `source_name`."""
    from feedhook.sources import bebanjo, modulo, teamhub

    out: list[Envelope] = []
    if kind == "sequence":
        out += [
            bebanjo.normalize(source_name, kind, url, bebanjo.json_event(entry))
            for entry in _SEQUENCE
        ]
    elif kind == "movida":
        out += [
            bebanjo.normalize(source_name, kind, url, raw)
            for raw in bebanjo.parse_xml_feed(_MOVIDA, "sample")
        ]
    elif kind == "teamhub":
        out += [teamhub.normalize(source_name, url, e, str(e["id"])) for e in _TEAMHUB]
    elif kind == "modulo":
        out += [modulo.normalize(source_name, url, "EVTC201105000052", u) for u in _MODULO]
    return out


# The event types each vendor's page lists (../seeds: Sequence and Movida "supported
# event types", TeamHub's operations and targets, Modulo's Action codes), as envelope
# types: what a subscription's type globs can ever match.
_SEQUENCE_TYPES = [
    f"{r}_{op}" for r in ("asset", "job", "task") for op in ("created", "deleted", "updated")
]
_MOVIDA_TYPES = [
    "asset_created",
    "asset_metadata_updated",
    "asset_updated",
    "brand_created",
    "brand_metadata_updated",
    "brand_updated",
    "contributor_created",
    "contributor_deleted",
    "contributor_updated",
    "credit_created",
    "credit_deleted",
    "credit_updated",
    "deal_created",
    "deal_deleted",
    "deal_metadata_updated",
    "deal_updated",
    "image_created",
    "image_updated",
    "image_metadata_updated",
    "image_deleted",
    "platform_created",
    "platform_updated",
    "platform_deleted",
    "publication_created",
    "scheduling_created",
    "scheduling_deleted",
    "scheduling_metadata_updated",
    "scheduling_updated",
    "title_created",
    "title_group_created",
    "title_group_metadata_updated",
    "title_group_updated",
    "title_metadata_updated",
    "title_updated",
    "title_deleted",
]
_TEAMHUB_OPERATIONS = [
    "added",
    "assigned",
    "completed",
    "created",
    "deleted",
    "failed",
    "reassigned",
    "removed",
    "unvoted",
    "updated",
    "voted",
]
_TEAMHUB_TARGETS = [
    "bookmark",
    "bot",
    "branch",
    "build",
    "code_review_comment",
    "code_review_description",
    "code_review_line_comment",
    "code_review_require_build",
    "code_review_state",
    "code_review_threshold",
    "code_review_title",
    "code_review",
    "collaborator",
    "comment_reply",
    "commit_comment",
    "commit_line_comment",
    "event_comment",
    "group_member",
    "milestone",
    "project",
    "project_short_name",
    "project_name",
    "project_description",
    "project_visibility",
    "project_collaborator",
    "project_group",
    "project_hook",
    "project_user",
    "push",
    "repository_hook",
    "repository",
    "reviewer",
    "tag",
    "task_branch",
    "task_comment",
    "task_commit",
    "task_description",
    "task_member",
    "task_milestone",
    "task_state",
    "task_title",
    "task",
    "user",
]


def known_types(kind: str) -> frozenset[str]:
    """The envelope types a source of this kind can publish, per its vendor's page."""
    from feedhook.sources.modulo import ACTIONS

    if kind in ("sequence", "movida"):
        upstream = _SEQUENCE_TYPES if kind == "sequence" else _MOVIDA_TYPES
        return frozenset(f"{kind}.{t.rpartition('_')[0]}.{t.rpartition('_')[2]}" for t in upstream)
    if kind == "teamhub":
        return frozenset(
            f"teamhub.{target}.{op}" for target in _TEAMHUB_TARGETS for op in _TEAMHUB_OPERATIONS
        )
    if kind == "modulo":
        return frozenset(f"modulo.event.{name}" for name in ACTIONS.values())
    return frozenset()
