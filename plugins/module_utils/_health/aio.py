# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Steps: probes written as generators, run one at a time (``run_blocking``) or many on one thread
(``Loop``, on the standard library's ``selectors``).

A step generator yields ``(target, events, until)``: wake me when ``target`` (a socket) is ready
for ``events`` (READ, WRITE), when ``target`` (a ``Lookup``) is resolved, or, with ``target`` None,
just at ``until`` (a ``time.perf_counter()`` instant). It is sent True when the target got ready,
False when ``until`` came first, and it checks its own clock then (net.py raises the timeouts).

    run_blocking(steps)           drive one generator in this thread -> its return value
    sleep(seconds)                the steps of a pause
    Loop().run(gens, slots, end)  drive many generators (at most ``slots`` at once) until ``end``;
                                  ``Loop.lookup(host, port)`` resolves a name on a thread, once per run
"""

from __future__ import annotations

import collections
import heapq
import queue
import select
import selectors
import socket
import threading
import time

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Lookup:
    """One getaddrinfo on its own thread: ``event`` is set when ``infos`` or ``error`` is there."""

    def __init__(self):
        self.event, self.infos, self.error, self.waiters = threading.Event(), None, None, []


def sleep(seconds):
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        yield None, 0, until


def _block(target, events, until):
    timeout = max(0.0, until - time.perf_counter())
    if target is None:
        time.sleep(timeout)
        return False
    if isinstance(target, Lookup):
        return target.event.wait(timeout)
    poller = select.poll()
    poller.register(target, (select.POLLIN if events & READ else 0) | (select.POLLOUT if events & WRITE else 0))
    return bool(poller.poll(timeout * 1000.0))


def run_blocking(steps):
    """Run the step generator ``steps`` to its end in this thread; return what it returns."""
    try:
        wait = next(steps)
    except StopIteration as stop:
        return stop.value
    while True:
        try:
            wait = steps.send(_block(*wait))
        except StopIteration as stop:
            return stop.value


class Loop:
    """Many step generators on one thread: one selector, one heap of timers, name lookups on threads."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.timers, self.ready, self.waiting, self.seq, self.active = [], collections.deque(), {}, 0, 0
        self.lookups, self.resolved = {}, queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, READ, None)

    def lookup(self, host, port):
        """The Lookup of (host, port), once per run: an address at once, a name on a daemon thread."""
        found = self.lookups.get((host, port))
        if found is None:
            found = self.lookups[(host, port)] = Lookup()
            try:
                found.infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
                found.event.set()
            except socket.gaierror:     # a name
                threading.Thread(target=self._resolve, args=(found, host, port), daemon=True).start()
        return found

    def _resolve(self, found, host, port):
        try:
            found.infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:    # socket.gaierror included: the probe reports it
            found.error = exc
        found.event.set()
        self.resolved.put(found)
        try:
            self.wake_w.send(b"x")
        except OSError:           # full (it is being woken anyway) or closed (the run ended)
            pass

    def _step(self, gen, value):
        try:
            target, events, until = gen.send(value)
        except StopIteration:
            self.active -= 1
            return
        self.seq += 1
        self.waiting[gen] = (self.seq, target)
        heapq.heappush(self.timers, (until, self.seq, gen))
        if isinstance(target, Lookup):
            if target.event.is_set():
                self.ready.append((gen, self.seq))
            else:
                target.waiters.append((gen, self.seq))
        elif target is not None:
            self.selector.register(target, events, (gen, self.seq))

    def _wake(self, gen, token, ready):
        entry = self.waiting.get(gen)
        if entry is None or entry[0] != token:
            return                      # a stale timer or event: the generator has moved on
        del self.waiting[gen]
        if entry[1] is not None and not isinstance(entry[1], Lookup):
            self.selector.unregister(entry[1])
        self._step(gen, ready)

    def _drain(self):
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while not self.resolved.empty():
            for gen, token in self.resolved.get().waiters:
                self.ready.append((gen, token))

    def run(self, gens, slots, end):
        """Drive ``gens`` (at most ``slots`` at once) until all end or ``end`` (perf_counter) passes;
        the ones still running then are closed (their ``finally`` blocks close their sockets)."""
        todo = collections.deque(gens)
        try:
            while todo or self.active:
                while todo and self.active < slots:
                    self.active += 1
                    self._step(todo.popleft(), None)
                now = time.perf_counter()
                if now >= end:
                    break
                timeout = 0 if self.ready else min(end, self.timers[0][0] if self.timers else end) - now
                for key, _events in self.selector.select(min(max(0.0, timeout), 3600.0)):
                    if key.data is None:
                        self._drain()
                    else:
                        self._wake(key.data[0], key.data[1], True)
                while self.ready:
                    self._wake(*self.ready.popleft(), True)
                now = time.perf_counter()
                while self.timers and self.timers[0][0] <= now:
                    _until, token, gen = heapq.heappop(self.timers)
                    self._wake(gen, token, False)
        finally:
            for gen in list(self.waiting):
                gen.close()
            self.selector.close()
            self.wake_r.close()
            self.wake_w.close()
