"""The broker link: connection and fail-over, frames on the wire, the confirming publisher, the subscription.

Between contract/ (what the deployables agree on), which it imports, and the deployables (consumer/, api/,
publisher/), which import it; it imports none of them nor store/. Every private name of aiormq and aio-pika
it relies on is touched in broker/hooks.py alone.
"""
