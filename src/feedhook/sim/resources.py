"""The resources a simulated BeBanjo account's events are about, as the vendor pages show
them: a Sequence job (every attribute and link of the Job page), its assets and tasks,
Movida titles, schedulings and the rest; in XML and (Sequence) JSON.

Events change them: `*_created` brings one to life, `*_updated` changes the attributes
its `changes` lists (and a job's `status`, which `changes` never lists), `*_deleted`
deletes it: then it answers 404 unless asked with `?deleted`, with the deleted form the
Job page shows (links to its own sub-resources flagged `?deleted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

JOB_STATUSES = ("pending", "late", "done", "live", "passed")

# Per kind: attributes in the order the pages print them, with their XML type.
ATTRIBUTES: dict[str, list[tuple[str, str | None]]] = {
    "job": [
        ("name", None),
        ("due-date", "date"),
        ("begins-at", "date"),
        ("ends-at", "date"),
        ("licensor-name", None),
        ("status", None),
        ("tasks-status", None),
        ("assets-status", None),
        ("tag-list", None),
        ("title-external-id", None),
    ],
    "asset": [("name", None), ("type-name", None), ("status", None)],
    "task": [("name", None), ("status", None), ("duration", "integer")],
    "title": [("name", None), ("episode-number", "integer"), ("external-id", None)],
    "scheduling": [("put-up", "datetime"), ("take-down", "datetime")],
}
GENERIC = [("name", None)]


@dataclass
class SimResource:
    kind: str
    id: int
    path: str  # below the API root, e.g. /work_areas/85/jobs/97001
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str, bool]] = field(default_factory=list)  # rel, href, own
    deleted: bool = False

    def apply(self, event_id: int, operation: str, changes: str | None) -> None:
        """What an event about this resource did to it."""
        if operation == "created":
            self.deleted = False
        elif operation == "deleted":
            self.deleted = True
        elif operation == "updated":
            for name in filter(None, (changes or "").split(",")):
                self.attributes[name] = _value(name, self._type(name), event_id)
            if self.kind == "job":  # the one change `changes` does not list
                status = self.attributes.get("status", JOB_STATUSES[0])
                next_status = JOB_STATUSES[(JOB_STATUSES.index(status) + 1) % len(JOB_STATUSES)]
                self.attributes["status"] = next_status

    def _type(self, name: str) -> str | None:
        return dict(ATTRIBUTES.get(self.kind, GENERIC)).get(name)

    def _href(self, api: str, href: str, own: bool) -> str:
        full = href if href.startswith("http") else f"{api}{href}"
        return f"{full}?deleted" if self.deleted and own else full

    def to_json(self, api: str) -> dict[str, Any]:
        document: dict[str, Any] = {"resource_type": self.kind, "id": self.id}
        for name, value in self.attributes.items():
            document[name.replace("-", "_")] = value
        for rel, href, own in self.links:
            document[f"{rel}_link"] = self._href(api, href, own)
        return document

    def to_xml(self, api: str) -> str:
        lines = [f"<{self.kind}>", f'  <id type="integer">{self.id}</id>']
        for name, value in self.attributes.items():
            kind = self._type(name)
            typed = f" type={quoteattr(kind)}" if kind else ""
            lines.append(f"  <{name}{typed}>{escape(str(value))}</{name}>")
        for rel, href, own in self.links:
            html = ' type="text/html"' if rel == "web" else ""
            lines.append(
                f"  <link{html} rel={quoteattr(rel)} href={quoteattr(self._href(api, href, own))}/>"
            )
        lines.append(f"</{self.kind}>")
        return "<?xml version='1.0' encoding='UTF-8'?>\n" + "\n".join(lines) + "\n"


def _value(name: str, kind: str | None, n: int) -> Any:
    if kind == "integer":
        return n
    if kind == "date":
        return f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}"
    if kind == "datetime":
        return f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T00:00:00Z"
    return f"{name} {n}"


def new_resource(system: str, kind: str, number: int) -> SimResource:
    """Resource `number` of a kind, with the attributes and links its page shows."""
    if system == "sequence":
        job = 97000 + number
        job_path = f"/work_areas/85/jobs/{job}"
        if kind == "job":
            path, ident = job_path, job
            own = ["assets", "tasks", "notes", "problems", "hooks"]
            links = [("self", path, True), ("work_area", "/work_areas/85", False)]
            links += [(rel, f"{path}/{rel}", True) for rel in own]
            movida = "https://movida.bebanjo.net/api"
            links += [
                ("scheduling", f"{movida}/schedulings/{number}", False),
                ("metadata", f"{movida}/schedulings/{number}/metadata", False),
                ("title", f"{movida}/titles/{number}", False),
                (
                    "web",
                    f"https://sequence.bebanjo.net/video_services/85/scheduled_titles/{job}"
                    "/workflow",
                    True,
                ),
            ]
        else:
            ident = {"asset": 467000, "task": 3000}.get(kind, 1000) + number
            path = f"{job_path}/{kind}s/{ident}"
            links = [("self", path, True), ("job", job_path, False)]
    else:
        ident = 110000 + number
        path = f"/{kind.partition('_')[0]}s/{ident}"
        links = [("self", path, True)]
        if kind == "scheduling":
            links.append(("title", f"/titles/{ident}", False))
        elif kind == "title":
            links += [
                ("schedulings", f"{path}/schedulings", True),
                ("images", f"{path}/images", True),
            ]
    attributes = {name: _value(name, kind_, ident) for name, kind_ in ATTRIBUTES.get(kind, GENERIC)}
    if kind == "job":
        attributes["status"] = JOB_STATUSES[0]
        attributes["tasks-status"] = "pending"
        attributes["assets-status"] = "not_received"
    return SimResource(kind, ident, path, attributes, links)
