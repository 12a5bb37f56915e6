"""Simulated upstreams and a receiver, faithful to the vendors' pages.

Used by `feedhook demo`, the tests and the benchmarks: real aiohttp servers on loopback.
"""

from feedhook.sim.bebanjo import SimFeed
from feedhook.sim.faults import Fault
from feedhook.sim.modulo import SimModulo
from feedhook.sim.receiver import Receiver
from feedhook.sim.teamhub import SimTeamHub

__all__ = ["Fault", "Receiver", "SimFeed", "SimModulo", "SimTeamHub"]
