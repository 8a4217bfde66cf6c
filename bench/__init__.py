"""End-to-end throughput benchmark of the real pipeline (publisher CLI → RabbitMQ → consumer → SQLite).

`python -m bench` (or `make bench`) runs the deployables as real processes on throwaway broker names and a
throwaway store, and reports median events per second per envelope size. It imports the product only for
names and readers it must agree on (`contract`); everything it measures runs in child processes.
"""
