"""Helpers shared by test modules: one idea a module (processes, gRPC servers, Kafka reads, fuzzing)."""
