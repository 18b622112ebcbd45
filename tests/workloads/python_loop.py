#!/usr/bin/env python3
"""python_loop: a Python 3 interpreter running a loop with open files (tests/README.md protocol).

State set up before `ready`, all of it checked on every check:
- out: a file in the control directory written line by line ("line <i>\\n" for i = 0, 1, ...,
  one line per loop turn, flushed each time) and kept open: f.tell() and os.lseek(fd, 0,
  SEEK_CUR) must both equal the number of bytes written, and the file read afresh must hold
  exactly the lines written so far (nothing lost, nothing doubled). Bytes beyond are allowed
  only as the exact continuation of those lines: after a --leave-running dump the original
  wrote on in the same file before the harness killed it and restored the copy.
- inp: a file of known content (INPUT_LEN deterministic bytes) open for reading, unbuffered,
  read 7 bytes per loop turn (wrapping to 0 at the end): f.tell() and os.lseek must equal the
  position the loop tracks, and the next bytes read must be the content at that position.
- txt: a text file open with a buffered reader (TextIOWrapper), read up to line TXT_LINE:
  the interpreter's read-ahead buffer lives in memory, the kernel offset is at its end. Each
  check reads one more line: the kernel offset must not have moved since the previous check
  and readline() must return the next line (TXT_LINE, TXT_LINE + 1, ...).
- state: a dict with a counter (incremented each loop turn, so it must equal the number of
  lines written) and a list (one entry per loop turn, entry i == i * 7 + 3, after a fixed prefix
  of 1000 squares); the counter must advance between checks.
- gen: a generator suspended mid-iteration: next(gen) must give the value the loop expects
  (it yields (i, i*i % 1000003) and has been advanced a known number of times).
- blob: 4 MiB of bytes built from a seeded PRNG, its SHA-256 recorded at setup.
- os.getpid() unchanged.
"""
import hashlib
import os
import random
import sys
import time

CTL = os.environ.get("VZCPT_CTL")
if not CTL:
    sys.stderr.write("python_loop: VZCPT_CTL is not set\n")
    sys.exit(2)

answered = 0


def write_file(name, text):
    """Writes CTL/name atomically (temporary file + rename), like wl.h."""
    tmp = os.path.join(CTL, ".%s.%d" % (name, os.getpid()))
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(CTL, name))


def poll():
    """True when a new check is requested (CTL/check holds a number above the last answered)."""
    global answered
    try:
        with open(os.path.join(CTL, "check")) as f:
            text = f.read()
    except OSError:
        return False
    try:
        seq = int(text.split()[0])
    except (ValueError, IndexError):
        return False
    if seq <= answered:
        return False
    answered = seq
    return True


def answer(verdict):
    write_file("result", "%d %s\n" % (answered, verdict))


INPUT_LEN = 100003
TXT_LINES = 5000
TXT_LINE = 1234


def input_byte(i):
    return (i * 131 + (i >> 8)) & 0xFF


def gen_values():
    i = 0
    while True:
        yield (i, i * i % 1000003)
        i += 1


def main():
    pid = os.getpid()
    inp_path = os.path.join(CTL, "python_loop.in")
    txt_path = os.path.join(CTL, "python_loop.txt")
    out_path = os.path.join(CTL, "python_loop.out")
    inp_data = bytes(input_byte(i) for i in range(INPUT_LEN))
    with open(inp_path, "wb") as f:
        f.write(inp_data)
    with open(txt_path, "w") as f:
        for i in range(TXT_LINES):
            f.write("text line %d\n" % i)

    inp = open(inp_path, "rb", buffering=0)
    inp_pos = 0
    # Start at a known position.
    inp.seek(4242)
    inp_pos = 4242

    txt = open(txt_path, "r")
    for i in range(TXT_LINE):
        line = txt.readline()
        if line != "text line %d\n" % i:
            sys.stderr.write("python_loop: setup read %r at line %d\n" % (line, i))
            sys.exit(2)
    txt_kpos = os.lseek(txt.fileno(), 0, os.SEEK_CUR)
    txt_line = TXT_LINE  # the next line readline() must return

    out = open(out_path, "w")
    out_bytes = 0

    state = {"counter": 0, "items": [i * i for i in range(1000)]}
    gen = gen_values()
    gen_next = 0  # how many values were taken from gen
    for _ in range(17):
        next(gen)
        gen_next += 1

    rng = random.Random(20240601)
    blob = bytes(rng.getrandbits(8) for _ in range(1 << 16)) * 64  # 4 MiB
    blob_sha = hashlib.sha256(blob).hexdigest()

    at_last_check = -1

    def check():
        nonlocal at_last_check, gen_next, txt_line, txt_kpos
        if os.getpid() != pid:
            return "os.getpid() = %d, recorded %d" % (os.getpid(), pid)
        c = state["counter"]
        if c <= at_last_check:
            return "counter %d did not advance past %d" % (c, at_last_check)
        at_last_check = c
        items = state["items"]
        if len(items) != 1000 + c:
            return "state['items'] has %d entries, expected %d" % (len(items), 1000 + c)
        for i in range(1000):
            if items[i] != i * i:
                return "state['items'][%d] = %r, expected %d" % (i, items[i], i * i)
        for i in range(c):
            if items[1000 + i] != i * 7 + 3:
                return "state['items'][%d] = %r, expected %d" % (1000 + i, items[1000 + i], i * 7 + 3)
        # out: positions and contents.
        if out.closed:
            return "out file is closed"
        t = out.tell()
        k = os.lseek(out.fileno(), 0, os.SEEK_CUR)
        if t != out_bytes or k != out_bytes:
            return "out: tell() = %d, lseek = %d, expected %d" % (t, k, out_bytes)
        if os.readlink("/proc/self/fd/%d" % out.fileno()) != out_path:
            return "out fd %d points to %s, expected %s" % (
                out.fileno(), os.readlink("/proc/self/fd/%d" % out.fileno()), out_path)
        with open(out_path, "rb") as f:
            got = f.read()
        want = "".join("line %d\n" % i for i in range(c)).encode()
        # A --leave-running dump lets the original write on after the snapshot: the copy
        # then finds those lines beyond its own position, an exact continuation of its own.
        extra = got[len(want):]
        if extra:
            cont = "".join("line %d\n" % i for i in range(c, c + extra.count(b"\n") + 1))
            if not cont.encode().startswith(extra):
                return "out file: %d bytes beyond the %d written are not the continuation: %r" % (
                    len(extra), len(want), extra[:40])
            got = got[:len(want)]
        if got != want:
            n = min(len(got), len(want))
            diff = next((i for i in range(n) if got[i] != want[i]), n)
            return "out file has %d bytes, expected %d; first difference at byte %d: %r vs %r" % (
                len(got), len(want), diff, got[diff:diff + 20], want[diff:diff + 20])
        # inp: positions and the bytes at the position.
        t = inp.tell()
        k = os.lseek(inp.fileno(), 0, os.SEEK_CUR)
        if t != inp_pos or k != inp_pos:
            return "inp: tell() = %d, lseek = %d, expected %d" % (t, k, inp_pos)
        peek = inp.read(16)
        inp.seek(inp_pos)
        if peek != inp_data[inp_pos:inp_pos + 16]:
            return "inp: read %r at %d, expected %r" % (peek, inp_pos, inp_data[inp_pos:inp_pos + 16])
        # txt: kernel offset unchanged since the last check, the buffered reader resumes at
        # the next line (one line is read per check).
        k = os.lseek(txt.fileno(), 0, os.SEEK_CUR)
        if k != txt_kpos:
            return "txt: kernel offset %d, expected %d" % (k, txt_kpos)
        line = txt.readline()
        want_line = "text line %d\n" % txt_line
        if line != want_line:
            return "txt: readline() = %r, expected %r" % (line, want_line)
        txt_line += 1
        txt_kpos = os.lseek(txt.fileno(), 0, os.SEEK_CUR)
        # gen: the suspended generator goes on where it was.
        v = next(gen)
        gen_next += 1
        want_v = (gen_next - 1, (gen_next - 1) ** 2 % 1000003)
        if v != want_v:
            return "next(gen) = %r, expected %r" % (v, want_v)
        h = hashlib.sha256(blob).hexdigest()
        if h != blob_sha:
            return "blob sha256 %s, recorded %s" % (h, blob_sha)
        return None

    write_file("ready", "ready\n")
    while True:
        c = state["counter"]
        line = "line %d\n" % c
        out.write(line)
        out.flush()
        out_bytes += len(line)
        state["items"].append(c * 7 + 3)
        state["counter"] = c + 1
        chunk = inp.read(7)
        want = inp_data[inp_pos:inp_pos + 7]
        if chunk != want:
            sys.stderr.write("python_loop: read %r at %d, expected %r\n" % (chunk, inp_pos, want))
        inp_pos += len(chunk)
        if inp_pos >= INPUT_LEN:
            inp.seek(0)
            inp_pos = 0
        if poll():
            why = check()
            answer("PASS" if why is None else "FAIL: " + why)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
