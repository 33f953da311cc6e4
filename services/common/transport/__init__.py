"""The thin gRPC layer shared by the stage services and the gateway: message conversion, the
error interceptor, the server lifecycle. Stage logic never imports this package."""
