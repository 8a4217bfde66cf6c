"""The soak: a long run of every kind of traffic through every kind of fault at once, checked exactly.

`make soak` (SOAK_MINUTES, SOAK_BACKEND=sqlite|postgres, SOAK_SEED) runs `python -m tests.soak`; the suite
runs a 3-minute soak per backend (tests/test_soak.py). The parts:

- schedule.py: the fault schedule, a pure function of the seed and the run's length (printed, replayable);
- traffic.py: the publisher CLI over AMQP (single events and envelopes, fed on stdin, with
  --confirmed-log), HTTP clients (single events and batches, some wait=stored), a reader, re-sends, poison;
- faults.py: carries out the schedule on the real processes and measures each fault's recovery;
- resources.py: samples every process's RSS, fds and threads, the broker's connections and channels, the
  database's connections, the store's size and the queue's depth; fits each series' growth;
- check.py: the final check (publisher/check.py's comparison over everything confirmed, exact counters,
  dead letters exactly the poison, nothing left in the queue);
- report.py: the fault table, the check, the resources, and PNG plots;
- run.py: puts them together.
"""
