#!/usr/bin/env python3
"""How long a topic create or delete holds up a producer on another topic.

Usage: scripts/admin-stall.py <tidegate binary> <port> [DELETE|POST]

Starts the binary on 127.0.0.1:<port> with a fresh data directory, creates 50 topics of
6 partitions and one of 40, then posts one event at a time to topic m1 while it deletes
the 40-partition topic (DELETE, the default) or creates another (POST). Prints how long
the admin request took and the slowest post meanwhile. Stops the server at the end.
"""
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time

binary, port = sys.argv[1], int(sys.argv[2])
op = sys.argv[3] if len(sys.argv) > 3 else "DELETE"
data = f"/tmp/tidegate-admin-stall-{port}"
shutil.rmtree(data, ignore_errors=True)
server = subprocess.Popen([binary, "serve", "--data-dir", data, "--addr", f"127.0.0.1:{port}", "--log", "warn"])


def request(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


try:
    for _ in range(100):
        try:
            if request("GET", "/readyz") == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    for i in range(50):
        request("POST", "/v1/topics", {"name": f"m{i}", "partitions": 6})
    request("POST", "/v1/topics", {"name": "big", "partitions": 40})
    stop, worst, count = False, [0.0], [0]

    def produce():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not stop:
            began = time.time()
            conn.request("POST", "/v1/topics/m1/events", body='{"a":1}', headers={"content-type": "application/json"})
            conn.getresponse().read()
            worst[0] = max(worst[0], time.time() - began)
            count[0] += 1

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(1)
    worst[0], count[0] = 0.0, 0
    began = time.time()
    if op == "DELETE":
        status = request("DELETE", "/v1/topics/big")
    else:
        status = request("POST", "/v1/topics", {"name": "big-again", "partitions": 40})
    took = time.time() - began
    time.sleep(0.5)
    stop = True
    producer.join()
    print(f"{op} answered {status} in {took:.2f} s; slowest post meanwhile {worst[0] * 1000:.0f} ms "
          f"({count[0]} posts)")
finally:
    server.terminate()
    server.wait()
    shutil.rmtree(data, ignore_errors=True)
