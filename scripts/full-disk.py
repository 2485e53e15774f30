#!/usr/bin/env python3
"""A real full disk: does the node take writes again once space is freed, without a restart?

Usage (root: it mounts a tmpfs):
    scripts/full-disk.py <tidegate binary> <port> [size MiB] [ballast MiB] [min free MiB]

Mounts a tmpfs of <size> MiB (default 200) on /tmp/tidegate-full-disk, fills <ballast> MiB
of it (default 100) with a file, starts the binary there with --min-free-disk-bytes <min free>
(default 0: RocksDB itself runs into ENOSPC; above 0 the node's floor refuses first, with
--write-buffer-bytes 32 MiB so a floor from 160 MiB is allowed), posts 100 KB batches until one fails, deletes the ballast
and reports how long until a post is taken again. Unmounts at the end.
"""
import http.client
import json
import os
import subprocess
import sys
import time

binary, port = sys.argv[1], int(sys.argv[2])
size_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 200
ballast_mib = int(sys.argv[4]) if len(sys.argv) > 4 else 100
min_free_mib = int(sys.argv[5]) if len(sys.argv) > 5 else 0
mount = "/tmp/tidegate-full-disk"
os.makedirs(mount, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", mount], check=True)
server = None
try:
    ballast = os.path.join(mount, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\0" * (ballast_mib << 20))
    server = subprocess.Popen([binary, "serve", "--data-dir", os.path.join(mount, "data"),
                               "--addr", f"127.0.0.1:{port}", "--min-free-disk-bytes", str(min_free_mib << 20),
                               *(["--write-buffer-bytes", str(32 << 20)] if min_free_mib else []), "--log", "warn"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def request(method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data

    for _ in range(100):
        try:
            if request("GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    request("POST", "/v1/topics", json.dumps({"name": "t", "partitions": 2}))
    body = json.dumps([{"pad": "x" * 1000, "i": i} for i in range(100)])
    acked = 0
    while True:
        status, data = request("POST", "/v1/topics/t/events", body)
        if status != 200:
            print(f"first refusal after {acked} acknowledged requests: {status} {data[:120]!r}")
            break
        acked += 1
    print("readyz:", request("GET", "/readyz")[0])
    os.remove(ballast)
    began = time.time()
    taken = None
    while time.time() - began < 90:
        if request("POST", "/v1/topics/t/events", body)[0] == 200:
            taken = time.time() - began
            break
        time.sleep(0.5)
    if taken is None:
        print(f"{ballast_mib} MiB freed: writes still refused after 90 s")
    else:
        print(f"{ballast_mib} MiB freed: writes taken again after {taken:.1f} s; readyz {request('GET', '/readyz')[0]}")
finally:
    if server is not None:
        server.terminate()
        server.wait()
    subprocess.run(["umount", mount], check=False)
