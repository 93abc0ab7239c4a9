"""NATS JetStream: subjects, codec, stream setup, publisher, local server."""
