#!/usr/bin/python3
"""Fetch and prepare the demo training corpus (two public-domain English genres).

Sources (exact Debian bookworm package versions, fetched with `apt-get download`):
  * bible-kjv-text 4.38 + bible-kjv 4.38: King James Bible (1611, public domain). The text ships
    compressed; the package's own `bible` program prints it one verse per line.
  * jargon-text 4.4.7-4.1: The Jargon File 4.4.7 (Eric S. Raymond; declared public domain).

Documents: one KJV chapter, or one Jargon File paragraph group of about DOC_TARGET_CHARS.
Split: every HELDOUT_EVERY-th document (counting from HELDOUT_OFFSET) goes to the held-out set, so
both genres appear in both splits. Output, under tools/train/data/ (git-ignored):
  train.txt, heldout.txt: documents separated by DOC_SEPARATOR; manifest.json with versions,
  sha256 of the downloaded .deb files and document counts.

Usage: /usr/bin/python3 tools/train/prepare_corpus.py
"""

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
DOWNLOAD_DIR = os.path.join(DATA_DIR, "debs")

# Pinned package versions (Debian bookworm main); recorded in the manifest.
PACKAGES = {
    "bible-kjv-text": "4.38",
    "bible-kjv": "4.38",
    "jargon-text": "4.4.7-4.1",
}
# Not corpus: OpenBLAS for fast CPU training (run_train.sh puts it on LD_LIBRARY_PATH).
TOOL_PACKAGES = {"libopenblas0-pthread": "0.3.21+ds-4"}

# Documents are separated by a line holding only this marker in train.txt / heldout.txt; the
# trainer maps each boundary to <|endoftext|>.
DOC_SEPARATOR = "\n<|endoftext|>\n"
# One held-out document in 20 = 5 % of the corpus; the offset avoids always holding out Genesis 1.
HELDOUT_EVERY = 20
HELDOUT_OFFSET = 7
# Jargon File entries are short; groups of about this many characters make documents of a size
# similar to a Bible chapter (~3-4 kB).
DOC_TARGET_CHARS = 3000
# Box-drawing characters mark the ASCII-art tables of the Jargon File, which are not prose.
BOX_CHARS = re.compile("[\u2500-\u257f]")
KJV_REF = re.compile(r"^([0-9]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def run(cmd, cwd=None):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch():
    """Download and unpack the pinned .deb files; returns {package: sha256}."""
    os.makedirs(DOWNLOAD_DIR, exist_ok=True)
    hashes = {}
    for name, version in {**PACKAGES, **TOOL_PACKAGES}.items():
        deb = [f for f in os.listdir(DOWNLOAD_DIR) if f.startswith(name + "_" + version.split(":")[-1])]
        if not deb:
            run(["apt-get", "download", f"{name}={version}"], cwd=DOWNLOAD_DIR)
            deb = [f for f in os.listdir(DOWNLOAD_DIR) if f.startswith(name + "_")]
        path = os.path.join(DOWNLOAD_DIR, deb[0])
        with open(path, "rb") as fh:
            hashes[deb[0]] = hashlib.sha256(fh.read()).hexdigest()
        dest = "openblas" if name in TOOL_PACKAGES else os.path.join("debs", "root")
        run(["dpkg-deb", "-x", path, os.path.join(DATA_DIR, dest)])
    return hashes


def kjv_documents():
    """One document per chapter: a title line, then one verse per line (verse numbers dropped)."""
    root = os.path.join(DOWNLOAD_DIR, "root")
    out = subprocess.run(
        [os.path.join(root, "usr/bin/bible"), "-p", os.path.join(root, "usr/lib"), "-f",
         "gen1:1-rev22:21"],
        check=True, capture_output=True, text=True).stdout
    docs, current, key = [], [], None
    for line in out.splitlines():
        m = KJV_REF.match(line)
        if not m:
            raise ValueError(f"unexpected bible output line: {line!r}")
        book, chapter, _verse, text = m.groups()
        if (book, chapter) != key:
            if current:
                docs.append("\n".join(current))
            key, current = (book, chapter), []
        current.append(text.strip())
    docs.append("\n".join(current))
    return docs


def jargon_documents():
    """Reflowed paragraphs of the Jargon File, grouped into documents of ~DOC_TARGET_CHARS."""
    path = os.path.join(DOWNLOAD_DIR, "root/usr/share/doc/jargon-text/jargon.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = fh.read()
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        if BOX_CHARS.search(block):
            continue
        text = " ".join(line.strip() for line in block.splitlines() if line.strip())
        text = re.sub(r" {2,}", " ", text)
        if len(text) >= 2:
            paragraphs.append(text)
    docs, current, size = [], [], 0
    for p in paragraphs:
        current.append(p)
        size += len(p)
        if size >= DOC_TARGET_CHARS:
            docs.append("\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n".join(current))
    return docs


def main():
    hashes = fetch()
    kjv, jargon = kjv_documents(), jargon_documents()
    # Interleave genres deterministically so the held-out rule samples both.
    docs = [("kjv", d) for d in kjv] + [("jargon", d) for d in jargon]
    train, heldout = [], []
    for i, (_src, d) in enumerate(docs):
        (heldout if i % HELDOUT_EVERY == HELDOUT_OFFSET else train).append(d)
    with open(os.path.join(DATA_DIR, "train.txt"), "w", encoding="utf-8") as fh:
        fh.write(DOC_SEPARATOR.join(train))
    with open(os.path.join(DATA_DIR, "heldout.txt"), "w", encoding="utf-8") as fh:
        fh.write(DOC_SEPARATOR.join(heldout))
    manifest = {
        "packages": {**PACKAGES, **TOOL_PACKAGES},
        "deb_sha256": hashes,
        "documents": {"kjv": len(kjv), "jargon": len(jargon), "train": len(train),
                      "heldout": len(heldout)},
        "chars": {"train": sum(map(len, train)), "heldout": sum(map(len, heldout))},
        "heldout_rule": f"document index % {HELDOUT_EVERY} == {HELDOUT_OFFSET}",
    }
    with open(os.path.join(DATA_DIR, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    json.dump(manifest, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
