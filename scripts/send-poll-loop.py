#!/usr/bin/env python3
# A fixed, deterministic request load for instruction counts (callgrind) of the
# request path: one user joins, then N times POST /send to the lobby and
# GET /poll?timeout=0 that reads it, on one kept-alive connection (1 + 2N
# requests). The server needs --send-rate 0. Standard library only.
#
#   scripts/send-poll-loop.py URL N
import http.client, json, sys, urllib.parse
url = urllib.parse.urlparse(sys.argv[1]); n = int(sys.argv[2])
c = http.client.HTTPConnection(url.hostname, url.port)
def req(method, path, body=None):
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse(); data = r.read()
    assert r.status == 200, (path, r.status, data)
    return json.loads(data)
j = req("POST", "/join", "name=ann&password=secret")
token, cursor = j["token"], j["cursor"]
for i in range(n):
    req("POST", "/send", f"token={token}&conversation=lobby&text=m{i}")
    cursor = req("GET", f"/poll?token={token}&cursor={cursor}&timeout=0")["cursor"]
print("requests", 1 + 2 * n)
