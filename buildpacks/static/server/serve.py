#!/usr/bin/env python3
# buildpacks/static/server/serve.py ROOT: the static buildpack's web process, copied into the slug
# as .bareku/static/serve.py. Serves ROOT (relative to the app) on 0.0.0.0:$PORT, like any
# Heroku web process, since the frontend may proxy from another node. GET and HEAD, with
# Last-Modified / If-Modified-Since from the standard library; no folder listings (a folder
# needs an index.html), no dotfiles, nothing outside ROOT (not even through a symlink).
import http.server
import os
import signal
import sys
import urllib.parse


class Handler(http.server.SimpleHTTPRequestHandler):
    server_version = 'bareku-static'
    sys_version = ''

    def send_head(self):
        segments = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).split('/')
        if any(s.startswith('.') for s in segments if s):
            self.send_error(404)
            return None
        real = os.path.realpath(self.translate_path(self.path))
        root = os.path.realpath(self.directory)
        if real != root and not real.startswith(root + os.sep):
            self.send_error(404)
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404)
        return None

    def log_message(self, format, *args):
        sys.stdout.write('%s %s\n' % (self.address_string(), format % args))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else 'public'
    port = int(os.environ.get('PORT', '5000'))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.reconfigure(line_buffering=True)

    def handler(*args, **kwargs):
        return Handler(*args, directory=root, **kwargs)

    server = http.server.ThreadingHTTPServer(('0.0.0.0', port), handler)
    print('serving %s on port %d' % (root, port), flush=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
