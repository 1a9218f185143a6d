"""A gRPC server and client for the gateway's end-to-end tests (grpcio, no generated code: the
methods take and return raw bytes).

    peer.py server PORT [CERT KEY] serves /demo.Echo/Unary (echo) and /demo.Echo/Stream (three
                                   replies) over h2c, or over TLS with CERT and KEY (PEM files),
                                   until killed; prints "ready" once listening
    peer.py client HOST:PORT       calls both through the target and prints one JSON line
    peer.py status HOST:PORT PATH  calls PATH and prints the gRPC status code and details
"""

import json
import sys
from concurrent import futures

import grpc


def identity(b):
    return b


def server(port, cert=None, key=None):
    def unary(request, context):
        return b"echo:" + request

    def stream(request, context):
        for i in range(3):
            yield b"part%d:" % i + request

    handler = grpc.method_handlers_generic_handler("demo.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, identity, identity),
    })
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((handler,))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
        s.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print("ready", flush=True)
    s.wait_for_termination()


def client(target):
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary("/demo.Echo/Unary", identity, identity)
        stream = channel.unary_stream("/demo.Echo/Stream", identity, identity)
        result = {
            "unary": unary(b"hello", timeout=10).decode(),
            "stream": [m.decode() for m in stream(b"hi", timeout=10)],
        }
    print(json.dumps(result), flush=True)


def status(target, path):
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(path, identity, identity)
        try:
            call(b"x", timeout=10)
            print(json.dumps({"code": "OK"}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(int(sys.argv[2]), *sys.argv[3:5])
    elif mode == "client":
        client(sys.argv[2])
    else:
        status(sys.argv[2], sys.argv[3])
