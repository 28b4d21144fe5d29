"""Tiny container images made here, without any registry: static C programs packed as OCI archives.

The real nodes need a sandbox ("pause") image before they can run any pod, and no outside
registry is reachable from the test machines, so the pause image is compiled here (`gcc -static`,
a program that sleeps until SIGTERM/SIGINT, as Kubernetes' own build/pause/linux/pause.c does)
and written as an OCI image layout in a tar (the format `ctr images import` and `skopeo copy
oci-archive:` read). The same way gives the tests a `hello` image: it prints its arguments and
exits with a code, or with `sleep` as its first argument waits for a signal (a container to
`kubectl exec` into), or with `resolve <name>` asks the pod's nameserver for the name's A
records, or with `connect <ip> <port>` opens a TCP connection, or with `ids` prints its uid and
gid. Each image is one uncompressed layer holding one file; archives are cached under the workdir
by the hash of the C source, so a session compiles each once.

    image = build_image(workdir, "pause")          # StaticImage(name=..., archive=...)
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = "localhost/speedrun-test"

SOURCES = {
    "pause": r"""
#include <signal.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
""",
    "hello": r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
/* An A query to resolv.conf's nameserver, by hand: static glibc cannot load NSS for getaddrinfo. */
static int resolve(const char *name) {
    char ns[64] = "", line[256];
    FILE *f = fopen("/etc/resolv.conf", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "nameserver %63s", ns) == 1) break;
    if (f) fclose(f);
    unsigned char q[512] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}, r[512];
    int n = 12;
    for (const char *p = name; *p;) {
        size_t len = strcspn(p, ".");
        q[n++] = (unsigned char)len;
        memcpy(q + n, p, len);
        n += (int)len;
        p += len + (p[len] == '.');
    }
    q[n++] = 0; q[n++] = 0; q[n++] = 1; q[n++] = 0; q[n++] = 1; /* type A, class IN */
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
    inet_pton(AF_INET, ns, &a.sin_addr);
    struct timeval tv = {5, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sendto(s, q, n, 0, (struct sockaddr *)&a, sizeof a);
    int got = (int)recv(s, r, sizeof r, 0), answers = got >= 12 ? (r[6] << 8) | r[7] : 0, i = n, found = 0;
    printf("%s via %s:", name, ns);
    for (int k = 0; k < answers && i < got; k++) {
        if ((r[i] & 0xc0) == 0xc0) i += 2; /* a compressed name */
        else { while (i < got && r[i]) i += r[i] + 1; i++; }
        if (i + 10 > got) break;
        int type = (r[i] << 8) | r[i + 1], len = (r[i + 8] << 8) | r[i + 9];
        i += 10;
        if (type == 1 && len == 4 && i + 4 <= got) {
            printf(" %d.%d.%d.%d", r[i], r[i + 1], r[i + 2], r[i + 3]);
            found++;
        }
        i += len;
    }
    printf("%s\n", got < 12 ? " no answer" : "");
    return found ? 0 : 1;
}
/* A TCP connection to ip:port (a Service's ClusterIP goes through kube-proxy's rules). */
static int dial(const char *ip, const char *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
    struct timeval tv = {5, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int ok = inet_pton(AF_INET, ip, &a.sin_addr) == 1 && connect(s, (struct sockaddr *)&a, sizeof a) == 0;
    printf("connect %s:%s: %s\n", ip, port, ok ? "connected" : "failed");
    return ok ? 0 : 1;
}
/* hello [sleep | exit <code> | resolve <name> | connect <ip> <port> | ids | words...]:
   print "hello from <host>: <words>" */
int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "resolve") == 0) return resolve(argv[2]);
    if (argc > 3 && strcmp(argv[1], "connect") == 0) return dial(argv[2], argv[3]);
    if (argc > 1 && strcmp(argv[1], "ids") == 0) {
        printf("uid=%d gid=%d\n", (int)getuid(), (int)getgid());
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "sleep") == 0) {
        signal(SIGTERM, stop);
        signal(SIGINT, stop);
        printf("hello: sleeping\n");
        fflush(stdout);
        for (;;) pause();
    }
    if (argc > 2 && strcmp(argv[1], "exit") == 0) {
        printf("hello: exit %s\n", argv[2]);
        return atoi(argv[2]);
    }
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    printf("hello from %s:", host);
    for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
    printf("\n");
    return 0;
}
""",
}


@dataclass(frozen=True)
class StaticImage:
    name: str  # the image reference pods and containerd use
    archive: Path  # the OCI archive (`ctr images import`, `skopeo copy oci-archive:`)


def compiler_missing() -> str | None:
    """Why no static image can be built here, or None."""
    return None if shutil.which("gcc") else "no `gcc` to compile the pause image (apt: gcc, libc6-dev)"


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def _layer(program: str, binary: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(program)
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
    return buffer.getvalue()


def write_oci_archive(path: Path, name: str, program: str, binary: bytes) -> None:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as a tar: one layer holding
    `/<program>`, the program as entrypoint. The index names the image both ways importers read
    it (containerd's io.containerd.image.name, OCI's ref.name)."""
    blobs: dict[str, bytes] = {}
    layer, layer_size = _blob(blobs, _layer(program, binary))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [f"/{program}"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},  # uncompressed: the diff id is the digest
    }
    config_digest, config_size = _blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    }  # fmt: skip
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": manifest["mediaType"], "digest": manifest_digest, "size": manifest_size,
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}],
    }  # fmt: skip
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index).encode()}  # fmt: skip
    files.update({f"blobs/sha256/{digest.split(':')[1]}": data for digest, data in blobs.items()})
    staging = path.with_suffix(".partial")
    with tarfile.open(staging, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    staging.replace(path)


def build_image(workdir: Path, program: str) -> StaticImage:
    """Compile SOURCES[program] statically and pack it; the tag is the source's hash (cached)."""
    source = SOURCES[program]
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    image = StaticImage(f"{REPOSITORY}/{program}:{tag}", workdir / f"{program}-{tag}.oci.tar")
    if image.archive.exists():
        return image
    workdir.mkdir(parents=True, exist_ok=True)
    c_file, binary = workdir / f"{program}.c", workdir / program
    c_file.write_text(source)
    proc = subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(c_file)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"gcc -static {c_file}: {proc.stderr.strip()[-500:]}")
    write_oci_archive(image.archive, image.name, program, binary.read_bytes())
    return image
