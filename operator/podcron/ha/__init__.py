"""Several replicas, each tick started once: the protocol of docs/ha.md.

* :mod:`~podcron.ha.store`: the compare-and-swap store the protocol runs on
  (:class:`~podcron.ha.store.CasStore`) and one in memory, with faults;
* :mod:`~podcron.ha.ring`: a job's bucket and its owner among an epoch's members;
* :mod:`~podcron.ha.protocol`: the decisions, pure: a member's renewals, epochs
  and start bounds, and the coordinator's fences, epochs and clean-up;
* :mod:`~podcron.ha.agent`: the asyncio loop that writes them, and the
  :class:`~podcron.engine.gate.FiringGate` the engine consults.
"""
