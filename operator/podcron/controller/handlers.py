"""kopf handlers: keep the engine's jobs in step with the ScheduledJob objects.

No finalizers, so deleting a ScheduledJob never hangs, even with the operator
gone. kopf calls no delete handler for an object that goes without one, so
deletion is seen as the watch stream's raw DELETED event (or a deletion
timestamp, when someone else's finalizer holds the object); a job whose
deletion was missed is simply absent when the operator resumes.

Counters live in status only, so every handler that registers a job the
engine does not know yet (operator start, creation, a spec fixed after being
invalid) seeds it from status: counters continue, and ``lastRunTime`` decides
the one catch-up run ``startingDeadlineSeconds`` allows.

Conditions and the failure streak are kept by
:mod:`podcron.controller.conditions`, seeded from status the same way.

Shared resources: a job whose ``spec.resources`` names a resource no factory
has is not scheduled (``Ready=False``, ``ResourceNotFound``). While the factory
of a resource a job lists fails, the job is ``Ready=False`` with reason
``ResourceUnavailable`` and the factory's error; it stays registered, so its
runs fail at once (and count), and it is ``Ready`` again as soon as the
resource is created, without a new reconcile.

Events: one whenever the ``Ready`` condition changes (status, reason or
message: a new schedule is news too), one per manual trigger, and one per
failed run; repeats aggregate into one Event with a count (see
:mod:`podcron.controller.events`). Successful runs post none.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf

from podcron import runrecord
from podcron.config import Settings
from podcron.controller import jobspecs, resource
from podcron.controller.conditions import JobConditions, ready_in
from podcron.controller.events import EventRecorder, ObjectRef
from podcron.controller.handled import HandledInMemory
from podcron.controller.replicas import Replicas
from podcron.controller.status import StatusWriter
from podcron.engine import Engine, JobEvent, RunFinished, RunStatus, ThreadAbandoned
from podcron.errors import (
    JobAlreadyRunning,
    JobNotFound,
    NotOwner,
    PodcronError,
    ResourceUnavailable,
    TooManyManualRuns,
)
from podcron.resources import ResourceManager, ResourceState

log = logging.getLogger("podcron.controller")

#: The status field with the last ``podcron.dev/run-now`` value acted on.
LAST_RUN_NOW = "lastRunNow"


def _left_unwritten(
    refused: Mapping[str, Any], found: runrecord.History, base: runrecord.RunCounts | None
) -> Mapping[str, Any] | None:
    """The runs a job's former owner counted but never wrote, on top of the status found.

    Its last run's fields too, unless the status found tells of a later one (the
    new owner ran the job since). None when there is nothing to add.
    """
    if base is None or "runs" not in refused:
        return None
    more = runrecord.counts_from_status(refused).since(base)
    if more == runrecord.RunCounts():
        return None
    patch: dict[str, Any] = {"runs": (found.counts + more).as_status()}
    started = runrecord.parse_time(refused.get("lastRunTime"))
    if started is not None and (found.last_run_time is None or started >= found.last_run_time):
        patch |= {key: refused[key] for key in runrecord.LAST_RUN_KEYS if key in refused}
    return patch


def _shows(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether ``status`` holds every field of ``patch`` as it is (merging it changes nothing)."""
    return all(status.get(key) == value for key, value in patch.items())


def _changed(shown: Mapping[str, Any] | None, condition: Mapping[str, Any]) -> bool:
    """Whether a ``Ready`` condition says something other than the one ``shown`` (or none)."""
    return shown is None or any(
        shown.get(key) != condition[key] for key in ("status", "reason", "message")
    )


def _is_deletion(type: str, body: kopf.Body, **_: Any) -> bool:
    """Whether a watch event says the object is gone or going (not, say, a status patch)."""
    return type == "DELETED" or bool(body.meta.get("deletionTimestamp"))


class Reconciler:
    """The operator's handlers, bound to one engine, status writer and event recorder."""

    def __init__(
        self,
        *,
        engine: Engine,
        writer: StatusWriter,
        events: EventRecorder,
        settings: Settings,
        on_reconciled: Callable[[str, str], None] | None = None,
        resources: ResourceManager | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._events = events
        self._settings = settings
        # Told (namespace, name) of each object registered, found invalid or
        # removed: readiness waits for the objects that existed at start-up.
        self._on_reconciled = on_reconciled
        self._refs: dict[str, ObjectRef] = {}
        # What the last reconciliation of each job said of its spec (observedGeneration,
        # schedule fields): with several replicas, a job's new owner writes it again, as the
        # previous owner may have seen the spec under other settings (a rolling upgrade).
        self._spec_status: dict[str, dict[str, Any]] = {}
        self._conditions = JobConditions()
        #: What kopf last handled of each object, for its diffs (kopf's diff base).
        self.handled = HandledInMemory(resource.KOPF_PREFIX)
        self._resources = resources
        # Per scheduled job: the resources it lists, and Ready as it is while they work.
        self._job_resources: dict[str, tuple[str, ...]] = {}
        self._scheduled: dict[str, tuple[str, str]] = {}
        # The jobs listing each resource, and why each failing resource fails.
        self._users: dict[str, set[str]] = {}
        self._unavailable: dict[str, str] = {}
        # With several replicas: which one this is, and per job UID its id and the
        # latest status any replica wrote (what a job gained here continues).
        self._replicas = replicas
        self._job_of_uid: dict[str, str] = {}
        self._latest_status: dict[str, tuple[Mapping[str, Any], str]] = {}
        # Per job, the run counters status held when this replica last wrote or read
        # them: what somebody else counted since is the difference (rebased).
        self._written: dict[str, runrecord.RunCounts] = {}
        # The counters of a patch whose answer was lost: status may hold them.
        self._perhaps_written: dict[str, runrecord.RunCounts] = {}
        # Jobs gained whose Ready Event waits for the gain's patch to land (after_gain).
        self._owed_events: set[str] = set()
        engine.add_listener(self._on_job_event)
        writer.rebase = self.rebased
        writer.landed = self.landed
        if replicas is not None:
            writer.wanted = self.wanted
        if resources is not None:
            resources.add_listener(self._on_resource)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Attach the handlers to ``registry``."""
        coordinates = (resource.GROUP, resource.VERSION, resource.PLURAL)
        kopf.on.resume(*coordinates, registry=registry)(self.on_resume)
        kopf.on.create(*coordinates, registry=registry)(self.on_create)
        kopf.on.update(*coordinates, registry=registry, field="spec")(self.on_update)
        # Filtered before the handler is called: nearly every watch event is
        # the echo of a status patch, and only deletions matter here.
        when = _is_deletion if self._replicas is None else self._note_status
        kopf.on.event(*coordinates, registry=registry, when=when)(self.on_event)
        kopf.on.field(
            *coordinates,
            registry=registry,
            field=("metadata", "annotations", resource.RUN_NOW_ANNOTATION),
        )(self.on_run_now)

    def _note_status(self, type: str, body: kopf.Body, **_: Any) -> bool:
        """With replicas, keep each job's latest status; let deletions through.

        A reference, but it keeps each job's whole decoded status alive, so a
        single replica, which never gains a job, keeps none.
        """
        status = body.get("status")
        if status is not None and self._replicas is not None:
            self._latest_status[str(body.meta.uid)] = (status, str(body.meta["resourceVersion"]))
        return _is_deletion(type, body)

    def _owns(self, uid: str) -> bool:
        """Whether this replica writes the job's run status: its owner, or the only replica."""
        return self._replicas is None or self._replicas.owns(uid)

    # -- handlers ---------------------------------------------------------

    async def on_resume(self, body: kopf.Body, **_: Any) -> None:
        """kopf listed an object again that it handled before (its watch started over)."""
        self._reconcile(body)

    async def on_create(self, body: kopf.Body, **_: Any) -> None:
        """A ScheduledJob seen for the first time by this process: a new one, or every one
        at start-up (:mod:`podcron.controller.handled`); counters continue from status."""
        self._reconcile(body)

    async def on_update(self, body: kopf.Body, **_: Any) -> None:
        """A spec change (``suspend`` included): re-arm only this job."""
        self._reconcile(body)

    async def on_event(self, body: kopf.Body, **_: Any) -> None:
        """Forget a deleted job at once."""
        namespace, name = str(body.meta.namespace), str(body.meta.name)
        jid = jobspecs.job_id(namespace, name)
        self._engine.remove(jid)
        self.handled.forget(str(body.meta.uid))
        if self._replicas is not None:
            uid = str(body.meta.uid)
            self._replicas.agent.remove_job(uid)
            self._job_of_uid.pop(uid, None)
            self._latest_status.pop(uid, None)
        self._written.pop(jid, None)
        self._perhaps_written.pop(jid, None)
        self._owed_events.discard(jid)
        self._writer.forget(namespace, name)
        self._conditions.forget(jid)
        self._untrack(jid)
        if self._on_reconciled is not None:
            self._on_reconciled(namespace, name)
        log.info("job %s removed", jid, extra={"job_id": jid})
        self._spec_status.pop(jid, None)
        ref = self._refs.pop(jid, None)
        if ref is not None:
            self._events.forget(ref)

    async def on_run_now(
        self, body: kopf.Body, reason: str, old: object, new: object, **_: Any
    ) -> None:
        """A changed ``podcron.dev/run-now`` annotation runs the job once.

        Only a change counts: an object created with the annotation already set
        does not run (applying the same manifest again must not run it twice),
        and removing the annotation runs nothing. A change made while no
        operator watched runs once when one does: the value last acted on is
        kept in status (``lastRunNow``), and at an object's first sight here
        (kopf's creation, :mod:`podcron.controller.handled`) a different value
        is such a change; with none kept yet, the value is kept and nothing runs.
        A change whose value status already holds was acted on by another replica
        (the job's owner before it moved here, seen late by this replica's watch).
        """
        if not new or not self._owns(str(body.meta.uid)):
            return  # every replica sees the annotation change; the job's owner runs it
        value = str(new)
        namespace, name = str(body.meta.namespace), str(body.meta.name)
        kept = body.status.get(LAST_RUN_NOW)
        if reason == kopf.Reason.CREATE:
            if kept is None:
                self._writer.update(namespace, name, {LAST_RUN_NOW: value})
            if kept is None or kept == value:
                return
        elif new == old or kept == value:
            return
        self._writer.update(namespace, name, {LAST_RUN_NOW: value})
        jid = jobspecs.job_id(namespace, name)
        ref = self._refs.get(jid)
        try:
            self._engine.trigger(jid)
        except (JobAlreadyRunning, TooManyManualRuns) as error:
            if ref is not None:
                self._events.post(ref, warning=True, reason="RunNowRefused", message=str(error))
        except JobNotFound:
            log.info("run-now on %s ignored: the job is not scheduled", jid)
            if ref is not None:
                self._events.post(
                    ref,
                    warning=True,
                    reason="RunNowRefused",
                    message="the job is not scheduled (see condition Ready)",
                )
        else:
            if ref is not None:
                self._events.post(
                    ref, warning=False, reason="RunNow", message=f"run requested ({value})"
                )

    # -- reconciliation ---------------------------------------------------

    def _reconcile(self, body: kopf.Body) -> None:
        meta, spec, status = body.meta, body.spec, body.status
        namespace, name = str(meta.namespace), str(meta.name)
        jid = jobspecs.job_id(namespace, name)
        ref = ObjectRef(namespace, name, str(meta.uid))
        self._refs[jid] = ref
        self._conditions.seed(jid, status)
        previous = self._conditions.ready(jid)
        patch: dict[str, Any] = {"observedGeneration": meta.get("generation")}
        valid = False
        try:
            job_spec = jobspecs.build_spec(
                namespace,
                name,
                spec,
                allowed_modules=self._settings.allowed_modules,
                uid=str(meta.uid),
                **({} if self._resources is None else {"check_resources": self._resources.check}),
            )
        except PodcronError as error:
            self._engine.remove(jid)
            self._untrack(jid)
            self._spec_status.pop(jid, None)
            condition = self._conditions.set_ready(
                jid, ok=False, reason=error.reason, message=str(error)
            )
            # The schedule fields describe a spec that no longer applies.
            patch |= {
                "nextRunTime": None,
                "running": False,
                "scheduleType": None,
                "humanReadable": None,
                "cronExpression": None,
            }
            log.warning(
                "ScheduledJob %s cannot be scheduled: %s", jid, error, extra={"job_id": jid}
            )
        else:
            valid = True
            if self._replicas is not None:
                self._job_of_uid[job_spec.uid] = jid
                created = runrecord.parse_time(meta.creation_timestamp)
                self._replicas.agent.add_job(
                    job_spec.uid, None if created is None else created.timestamp()
                )
            # A new job's counters continue from status; a job the engine already runs
            # keeps its own, unless someone else counted more runs there since.
            history = runrecord.history_from_status(status)
            self._engine.upsert(job_spec, history=history)
            self._engine.continue_history(jid, history)
            # Kept if known: the body may be older than this replica's last patch.
            self._written.setdefault(jid, history.counts)
            self._writer.note_version(namespace, name, str(meta["resourceVersion"]))
            if job_spec.suspended:
                scheduled = ("Suspended", "suspended: no runs are scheduled")
            else:
                scheduled = ("Scheduled", f"scheduled {job_spec.schedule.human_readable}")
            self._track(jid, job_spec.resources, scheduled)
            condition = self._set_ready(jid)
            patch |= jobspecs.schedule_status(job_spec.schedule)
            self._spec_status[jid] = dict(patch)
            if self._owns(job_spec.uid):
                patch |= runrecord.run_status(self._engine.snapshot(jid).record)
                if self._replicas is not None:
                    # A job this replica owned before it knew the job was never gained
                    # (after_gain): say whose it is here, or kubectl shows no REPLICA.
                    patch["replica"] = self._replicas.identity
        patch |= self._conditions.status(jid)
        if valid and self._owner_unknown(ref.uid):
            # A job no epoch here gives an owner yet (this replica is starting): its owner
            # writes all of it, and posts the Event, when it gains it (after_gain). Four
            # replicas starting beside 2,000 new jobs, each writing them meanwhile, sent
            # four patches and four Events a job, and had 8,833 patches refused (409).
            # A spec it cannot schedule is never gained: every replica says so, alike.
            pass
        elif not self._moved(jid):
            # Another replica's is the same, from the same spec: one writer, one Event.
            # Urgent: someone who just applied or edited the object waits for this. Not
            # sent when the object says all of it already and nothing else is on its way
            # (which it would then overwrite): a restart reconciles every job again, most
            # of them unchanged, and N such patches took N/20 s of the status ceiling.
            if not (self._writer.idle(namespace, name) and _shows(status, patch)):
                self._writer.update(namespace, name, patch, urgent=True)
            self._post_if_changed(ref, previous, condition)
        if self._on_reconciled is not None:
            self._on_reconciled(namespace, name)

    def _post_if_changed(
        self, ref: ObjectRef, previous: Mapping[str, Any] | None, condition: Mapping[str, Any]
    ) -> None:
        if _changed(previous, condition):
            self._events.post(
                ref,
                warning=condition["status"] != "True",
                reason=condition["reason"],
                message=condition["message"],
            )

    # -- shared resources -------------------------------------------------

    def _track(self, jid: str, names: tuple[str, ...], scheduled: tuple[str, str]) -> None:
        self._untrack(jid)
        self._scheduled[jid] = scheduled
        self._job_resources[jid] = names
        for name in names:
            self._users.setdefault(name, set()).add(jid)

    def _untrack(self, jid: str) -> None:
        self._scheduled.pop(jid, None)
        for name in self._job_resources.pop(jid, ()):
            users = self._users.get(name)
            if users is not None:
                users.discard(jid)

    def _set_ready(self, jid: str) -> dict[str, Any]:
        """Set Ready of a scheduled job: as scheduled, unless a resource it lists fails."""
        for name in self._job_resources.get(jid, ()):
            problem = self._unavailable.get(name)
            if problem is not None:
                return self._conditions.set_ready(
                    jid,
                    ok=False,
                    reason=ResourceUnavailable.reason,
                    message=str(ResourceUnavailable(name, f"{problem}; retrying")),
                )
        reason, message = self._scheduled[jid]
        return self._conditions.set_ready(jid, ok=True, reason=reason, message=message)

    def _on_resource(self, state: ResourceState) -> None:
        """A resource changed: the jobs listing it follow whether it fails, and why."""
        if state.failing:
            problem: str | None = state.reason or "its factory failed"
        elif state.up:
            problem = None
        else:  # pending, or closing at shutdown: nothing the jobs should show
            return
        if self._unavailable.get(state.name) == problem:
            return  # another attempt, failed the same way
        if problem is None:
            self._unavailable.pop(state.name, None)
        else:
            self._unavailable[state.name] = problem
        for jid in sorted(self._users.get(state.name, ())):
            ref = self._refs.get(jid)
            if ref is None:
                continue
            previous = self._conditions.ready(jid)
            condition = self._set_ready(jid)
            self._writer.update(ref.namespace, ref.name, self._conditions.status(jid))
            self._post_if_changed(ref, previous, condition)

    # -- several replicas ---------------------------------------------------

    def refuse_if_elsewhere(self, job_id: str) -> None:
        """Raise :class:`NotOwner` when another replica runs ``job_id`` (or none does yet)."""
        ref = self._refs.get(job_id)
        if self._replicas is None or ref is None or self._replicas.owns(ref.uid):
            return
        agent = self._replicas.agent
        owner = agent.owner_of(ref.uid)
        endpoint = None if owner is None else agent.endpoint_of(owner)
        raise NotOwner(job_id, endpoint or "")

    def before_gain(self, uids: Sequence[str]) -> None:
        """Jobs this replica gains continue the counters their previous owner wrote.

        As the watch last showed them: if the previous owner wrote again since,
        the API server refuses the first patch from here, and :meth:`rebased` reads them.
        """
        for uid in uids:
            jid, seen = self._job_of_uid.get(uid), self._latest_status.get(uid)
            ref = None if jid is None else self._refs.get(jid)
            if jid is not None and ref is not None and seen is not None:
                status, version = seen
                history = runrecord.history_from_status(status)
                self._engine.continue_history(jid, history)
                self._written[jid] = history.counts
                self._writer.take_version(ref.namespace, ref.name, version)

    def after_gain(self, uids: Sequence[str]) -> None:
        """Status of the jobs gained now comes from here, all of it, and says so."""
        assert self._replicas is not None  # only called by the replicas' gate
        for uid in uids:
            jid = self._job_of_uid.get(uid)
            ref = None if jid is None else self._refs.get(jid)
            if jid is None or ref is None:
                continue
            try:
                snapshot = self._engine.snapshot(jid)
            except JobNotFound:
                continue
            patch = (
                self._spec_status.get(jid, {})
                | runrecord.run_status(snapshot.record)
                | self._conditions.status(jid)
                | {"replica": self._replicas.identity}
            )
            # The object may not say Ready yet (registered before any epoch, it was left to
            # its owner): then this patch goes before run updates, as a registration's does;
            # queued behind them, it would wait up to the number of jobs changing over the
            # status ceiling (minutes at 20,000 jobs). Its Event is posted once the patch
            # lands (landed): a replica alone in the ring's first epoch gains every job and
            # loses three in four of them seconds later, before most of its patches went
            # out, and each job's new owner says it again. Otherwise the previous owner
            # wrote as much already.
            condition = self._conditions.ready(jid)
            seen = self._latest_status.get(uid)
            stale = condition is not None and _changed(
                None if seen is None else ready_in(seen[0]), condition
            )
            self._writer.update(ref.namespace, ref.name, patch, urgent=stale)
            if stale:
                self._owed_events.add(jid)

    def _on_job_event(self, event: JobEvent) -> None:
        if self._moved(event.job_id):
            # A run that began before the job moved: its outcome is in this replica's
            # metrics, spans and logs, but status is the new owner's alone.
            return
        if isinstance(event, RunFinished) and event.status is not RunStatus.SKIPPED:
            succeeded = event.status is RunStatus.SUCCESS
            self._conditions.run_ended(event.job_id, succeeded=succeeded, error=event.error)
            if not succeeded:
                ref = self._refs.get(event.job_id)
                if ref is not None:
                    self._events.run_failed(ref, event.error)
        elif isinstance(event, ThreadAbandoned):
            ref = self._refs.get(event.job_id)
            if ref is not None:
                self._events.post(
                    ref,
                    warning=True,
                    reason="ThreadAbandoned",
                    message=f"a run's thread did not stop ({event.error}); the job counts as"
                    f" running until it returns ({event.abandoned_threads} abandoned threads)",
                )
        self._writer.update_when_sent(
            event.namespace, event.name, functools.partial(self._run_status, event.job_id)
        )

    def rebased(
        self, namespace: str, name: str, refused: Mapping[str, Any], found: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """What to patch instead of ``refused``, now that the job's status is ``found``.

        Somebody wrote the status since this replica last did (with several
        replicas, a job's previous owner as it drains, or the new owner while
        this one drains; or a user). The runs counted there since are added to
        this replica's, and the run fields are built again from there. A job
        that went on elsewhere gets only what this replica counted and never
        wrote (say, the run SIGTERM interrupted), on top of the counters found.
        """
        jid = jobspecs.job_id(namespace, name)
        history = runrecord.history_from_status(found)
        base, self._written[jid] = self._written.get(jid), history.counts
        perhaps = self._perhaps_written.pop(jid, None)
        if perhaps is not None and history.counts.covers(perhaps):
            # Everything that patch counted is there: it was applied, its answer lost
            # (counted twice otherwise). Wrong only if it was not, and other writers
            # counted at least as much meanwhile: then this replica's runs are lost.
            base = perhaps
        moved = self._moved(jid) or self._taken_over(jid, found)
        left = _left_unwritten(refused, history, base) if moved else None
        # Moved or not, its copy goes on from what was found, as the base does.
        self._engine.continue_history(jid, history, base)
        if moved:
            return left
        self._writer.update_when_sent(namespace, name, functools.partial(self._run_status, jid))
        # The counters it held may be lower than those found: the builder sends them anew.
        return {key: value for key, value in refused.items() if key != "runs"}

    def wanted(self, namespace: str, name: str, patch: Mapping[str, Any]) -> bool:
        """Whether a queued patch still goes out: not one of a job that moved away since it
        was queued, unless it counts runs this replica has not written.

        A job's owner may change while its patch waits for a turn of the status ceiling:
        the new owner writes it now. Counters are sent still when they hold runs counted
        here, to be added to the new owner's (:meth:`rebased`); not when they are the ones
        status held already (a replica alone in the ring's first epoch gains every job and
        queues each one's whole status, counters included, then loses three in four of them
        seconds later: at 20,000 jobs it went on to send 15,000 such patches, and its own
        jobs' first statuses waited behind them).
        """
        jid = jobspecs.job_id(namespace, name)
        if not self._moved(jid):
            return True
        written = self._written.get(jid)
        return "runs" in patch and (
            written is None or runrecord.counts_from_status(patch) != written
        )

    def landed(self, namespace: str, name: str, patch: Mapping[str, Any], sure: bool) -> None:
        """A status patch was taken (or, not ``sure``, perhaps): its counters are status's,
        and the Ready Event a gain owes is posted."""
        jid = jobspecs.job_id(namespace, name)
        if jid in self._owed_events and "conditions" in patch:
            self._owed_events.discard(jid)
            ref, condition = self._refs.get(jid), self._conditions.ready(jid)
            # A job that moved on meanwhile (its patch went for the runs it counted) is
            # its new owner's to announce.
            if ref is not None and condition is not None and not self._moved(jid):
                self._post_if_changed(ref, None, condition)
        if "runs" not in patch:
            return
        counts = runrecord.counts_from_status(patch)
        if sure:
            self._written[jid] = counts
            self._perhaps_written.pop(jid, None)
        else:
            self._perhaps_written[jid] = counts

    def _taken_over(self, job_id: str, found: Mapping[str, Any]) -> bool:
        """Whether ``found`` names another replica as the owner of a job this one does not own.

        A replica that released its jobs at SIGTERM adopts no epoch after, so
        :meth:`_moved` cannot tell it that a job went on elsewhere; the status can.
        """
        ref, replicas = self._refs.get(job_id), self._replicas
        if ref is None or replicas is None or replicas.owns(ref.uid):
            return False
        return found.get("replica") not in (None, replicas.identity)

    def _run_status(self, job_id: str) -> dict[str, Any]:
        """A job's run fields and conditions as they are now: built when its patch goes out."""
        if self._moved(job_id):
            return {}  # since its last run event: its status is the new owner's
        try:
            snapshot = self._engine.snapshot(job_id)
        except JobNotFound:
            return {}
        return runrecord.run_status(snapshot.record) | self._conditions.status(job_id)

    def _owner_unknown(self, uid: str) -> bool:
        """Whether this replica has adopted no epoch yet that says who owns job ``uid``."""
        return self._replicas is not None and self._replicas.agent.owner_of(uid) is None

    def _moved(self, job_id: str) -> bool:
        """Whether another replica owns the job now (not while no epoch says who does)."""
        ref = self._refs.get(job_id)
        return (
            ref is not None
            and self._replicas is not None
            and self._replicas.runs_elsewhere(ref.uid)
        )
