"""gRPC in every service process: a ``grpc.aio`` server on the service's second port, in the same event
loop as its HTTP API, calling the same item validation and the same batcher (``services.rpc.server``);
one servicer module per service; the wire format of the hot answers (``services.rpc.wire``)."""
