"""The gRPC API: ``vlmops/v1/*.proto`` and the Python code grpcio-tools generates from them (committed;
``make proto`` regenerates it, and a test fails when it is stale)."""
