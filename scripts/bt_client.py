#!/usr/bin/python3
"""A regular BitTorrent client (Debian's python3-libtorrent) for the interop tests, loopback only.

  bt_client.py download (--torrent FILE | --magnet URI) --peer HOST:PORT --out DIR [--timeout S]
      Downloads from that one peer (no tracker, DHT, LSD, UPnP or NAT-PMP); prints
      `done <sha256> <path>` and exits 0, or exits 1 with the reason on timeout.
  bt_client.py seed --torrent FILE --data DIR [--timeout S]
      Checks DIR/<name> against the torrent and seeds it on 127.0.0.1 (an ephemeral port);
      prints `listening <port>`, then `seeding`, then `uploaded <bytes>` as peers download;
      exits after the timeout (or when killed).

Run it with /usr/bin/python3: libtorrent is a Debian package, not on the pyenv python.
"""

import argparse
import hashlib
import os
import sys
import time

import libtorrent as lt


def log(*parts):
    print(*parts, flush=True)


def session():
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Our peer speaks plain TCP: no uTP, no MSE/PE encryption attempts first.
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        "allow_multiple_connections_per_ip": True,
        "user_agent": "shardswarm-interop-test",
        "alert_mask": int(lt.alert.category_t.error_notification
                          | lt.alert.category_t.peer_notification
                          | lt.alert.category_t.status_notification),
    }
    return lt.session(settings)


def drain_alerts(ses):
    for a in ses.pop_alerts():
        print("alert:", type(a).__name__, a.message(), file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_peer(text):
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        sys.exit(f"refusing non-loopback peer {text}")
    return host.strip("[]"), int(port)


def download(args):
    ses = session()
    if args.torrent:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(args.torrent)
    else:
        atp = lt.parse_magnet_uri(args.magnet)
    atp.save_path = args.out
    handle = ses.add_torrent(atp)
    peer = parse_peer(args.peer)
    deadline = time.monotonic() + args.timeout
    last_connect = 0.0
    last_report = 0.0
    while time.monotonic() < deadline:
        st = handle.status()
        if st.is_seeding:
            break
        now = time.monotonic()
        if st.num_peers == 0 and now - last_connect > 1.0:
            handle.connect_peer(peer)
            last_connect = now
        if now - last_report > 1.0:
            log(f"progress {st.progress:.3f} state {st.state} peers {st.num_peers} "
                f"metadata {st.has_metadata}")
            last_report = now
        drain_alerts(ses)
        time.sleep(0.05)
    else:
        drain_alerts(ses)
        st = handle.status()
        log(f"timeout: progress {st.progress:.3f} state {st.state} metadata {st.has_metadata}")
        sys.exit(1)
    handle.flush_cache()
    ti = handle.torrent_file()
    path = os.path.join(args.out, ti.files().file_path(0))
    # The file is complete and hash-checked by libtorrent; let its disk thread settle.
    handle.pause()
    time.sleep(0.2)
    log(f"done {sha256(path)} {path}")


def seed(args):
    ses = session()
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(args.torrent)
    atp.save_path = args.data
    handle = ses.add_torrent(atp)
    log(f"listening {ses.listen_port()}")
    deadline = time.monotonic() + args.timeout
    seeding = False
    uploaded = -1
    while time.monotonic() < deadline:
        st = handle.status()
        if st.is_seeding and not seeding:
            seeding = True
            log("seeding")
        if st.errc.value() != 0:
            log(f"error {st.errc.message()}")
            sys.exit(1)
        if st.total_payload_upload != uploaded:
            uploaded = st.total_payload_upload
            log(f"uploaded {uploaded}")
        drain_alerts(ses)
        time.sleep(0.1)
    log("timeout")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--torrent")
    src.add_argument("--magnet")
    d.add_argument("--peer", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("seed")
    s.add_argument("--torrent", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    if args.cmd == "download":
        download(args)
    else:
        seed(args)


if __name__ == "__main__":
    main()
