"""The Open Inference Protocol v2 gRPC API: the proto (KServe's grpc_predict_v2.proto) and the stubs
generated from it by ``images/server/tools/gen_oip_stubs.py`` (checked in; a test fails when stale)."""
