#!/usr/bin/python3
# bench/handlers/hello.py: the benchmark's hello-world Mongrel2 handler on Debian's python3-zmq
# (run it with /usr/bin/python3). PULL connects to BAREKU_HANDLER_SEND_SPEC, PUB to
# BAREKU_HANDLER_RECV_SPEC; every request gets "200 OK, Hello, world!" and @* notices get no
# answer. Prints "ready" once connected. The headers are never parsed: the connection id is the
# second space-separated field and the path the third.
import os
import zmq

UUID = b'a5a5a5a5-0000-4000-8000-00000000be12'
HTTP = b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!'


def main():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(os.environ['BAREKU_HANDLER_SEND_SPEC'])
    pub = ctx.socket(zmq.PUB)
    pub.connect(os.environ['BAREKU_HANDLER_RECV_SPEC'])
    print('ready', flush=True)
    recv, send = pull.recv, pub.send
    while True:
        _, conn_id, path, _ = recv().split(b' ', 3)
        if path[:1] == b'@':
            continue
        send(b'%s %d:%s, %s' % (UUID, len(conn_id), conn_id, HTTP))


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        pass
