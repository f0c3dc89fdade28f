"""Following the champion alias in a serving replica: each poll reads the alias; a new version is
loaded and checked (finite images on a fixed seed, which warms it) beside the one serving, and only
then swapped in, as one reference assignment, so no request sees a half-loaded model. A version
that fails to load or draws non-finite images is refused: the old one keeps serving, the reason is
logged and tagged on the version (`serving.refused`), and it is not tried again by this replica."""
from __future__ import annotations

import logging
import threading

from flows.serving.model import ModelRefused, Served, load_version
from flows.serving.tags import REFUSED_TAG, SERVED_TAG

log = logging.getLogger("ganpipe.serving")
POLL_S = 2.0  # seconds between reads of the alias: a moved alias serves within this plus load and check


class NoChampion(RuntimeError):
    pass


class Rollout:
    def __init__(self, name: str, tracking_uri: str):
        from flows.registry.tracking import client

        self.name, self.tracking_uri = name, tracking_uri
        self.client = client(tracking_uri)
        self.current: Served | None = None  # swapped whole, never mutated: readers need no lock
        self.refused: dict[str, str] = {}  # version -> reason
        self._polling = threading.Lock()  # one load at a time

    def poll(self) -> str:
        """Read the alias and switch if it moved to a version that passes; returns what happened.
        Raises (NoChampion, ModelRefused) only while nothing is served yet: a replica must not start
        without a model, but once serving, a broken or missing champion leaves the old one in place."""
        from flows.registry.tracking import CHAMPION, champion_version

        with self._polling:
            mv = champion_version(self.client, self.name)
            if mv is None:
                if self.current is None:
                    raise NoChampion(f"{self.name}: no version holds the {CHAMPION!r} alias (or no such model)")
                return "unchanged: alias missing, serving the last champion"
            version = str(mv.version)
            if self.current is not None and self.current.version == version:
                return "unchanged"
            if version in self.refused:
                return f"refused earlier: {version}"
            try:
                new = load_version(self.client, self.tracking_uri, self.name, version)
            except ModelRefused as e:
                self._refuse(version, str(e))
                if self.current is None:  # a starting replica (a replacement, a scale-up): the last served one
                    return self._fall_back(version)
                return f"refused: {version}"
            return self._switch(new)

    def _switch(self, new: Served) -> str:
        old, self.current = self.current, new  # the switch: requests in flight keep the version they hold
        log.warning("%s: serving version %s (was %s)", self.name, new.version, old.version if old else "none")
        try:  # what `models compare` and the run summary show as served
            self.client.set_registered_model_tag(self.name, SERVED_TAG, new.version)
        except Exception as e:
            log.error("%s: could not tag %s=%s: %s", self.name, SERVED_TAG, new.version, e)
        return f"switched: {new.version}"

    def _fall_back(self, champion: str) -> str:
        """A replica starting while the champion is refused serves what the others serve (the
        model's `serving.version` tag), so a replaced replica does not take the service down."""
        last = (self.client.get_registered_model(self.name).tags or {}).get(SERVED_TAG)
        if not last or last == champion or last in self.refused:
            raise ModelRefused(f"{self.name} version {champion}: {self.refused[champion]} (and no earlier "
                               "served version to fall back to)")
        try:
            new = load_version(self.client, self.tracking_uri, self.name, last)
        except ModelRefused as e:
            self._refuse(last, str(e))
            raise
        log.warning("%s: champion %s is refused; serving %s, the version served before", self.name, champion, last)
        return self._switch(new)

    def _refuse(self, version: str, reason: str) -> None:
        self.refused[version] = reason
        log.error("%s version %s refused for serving: %s%s", self.name, version, reason,
                  f"; version {self.current.version} keeps serving" if self.current else "")
        try:
            self.client.set_model_version_tag(self.name, version, REFUSED_TAG, reason[:4000])
        except Exception as e:  # the registry being away must not stop serving: the log has it
            log.error("%s version %s: could not tag %s: %s", self.name, version, REFUSED_TAG, e)


class Follower:
    """A daemon thread polling a Rollout every poll_s seconds until stopped."""

    def __init__(self, rollout: Rollout, poll_s: float):
        self.rollout, self.poll_s = rollout, poll_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"rollout-{rollout.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.poll_s):  # a poll interval, not a synchronisation
            try:
                self.rollout.poll()
            except Exception as e:  # an unreachable registry: keep serving, try again next poll
                log.error("%s: alias poll failed: %s: %s", self.rollout.name, type(e).__name__, e)
