"""State files under concurrency and faults: concurrent appenders, other programs
holding the file, SIGKILL mid-append, orphaned temporary files, a full disk, and bad or
damaged files (every one a StateFileError naming the path)."""

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import caskax as cx
from caskax.examples.models import Gaussian1D

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def lc_model(value=0.0):
    return Gaussian1D("lc", t0=value, sigma=value, peak_flux=value).to_dynamic("t0")


def columns(path):
    """Every param's committed samples (the first ``count_samples`` rows), checked
    against what ``load_state`` gives for the first and last sample."""
    n = cx.io.count_samples(path)
    with h5py.File(path, "r") as f:
        cols = {name: f[f"lc/{name}/value"][:n] for name in ("t0", "sigma", "peak_flux")}
    for index in (0, -1):
        loaded = lc_model().load_state(path, index=index)
        for name, col in cols.items():
            assert float(getattr(loaded, name).value) == col[index]
    return cols


def leftovers(folder, keep=("chain.h5",)):
    return sorted(set(os.listdir(folder)) - set(keep))


def run(script, *args, timeout=120):
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    return out


# -- locking ------------------------------------------------------------------------------------
APPENDER = """
    import sys
    from caskax.examples.models import Gaussian1D
    path, base, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start appending together
    for k in range(count):
        v = base + k
        Gaussian1D("lc", t0=v, sigma=v, peak_flux=v).to_dynamic("t0").append_state(path)
"""


def test_concurrent_appenders_lose_nothing(tmp_path):
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(APPENDER), str(path), str(base), "50"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for base in (1000.0, 2000.0)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    cols = columns(path)
    assert len(cols["t0"]) == 1 + 100
    want = {0.0} | {1000.0 + k for k in range(50)} | {2000.0 + k for k in range(50)}
    assert set(cols["t0"]) == want
    for name in ("sigma", "peak_flux"):  # each sample whole: one appender's values per row
        np.testing.assert_array_equal(cols[name], cols["t0"])
    # each process's samples keep their order
    for base in (1000.0, 2000.0):
        mine = [v for v in cols["t0"] if base <= v < base + 1000]
        assert mine == sorted(mine)
    assert leftovers(tmp_path) == []  # no lock file or temporary file left


HOLD_LOCK = """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""

HOLD_OPEN = """
    import sys, time, h5py
    with h5py.File(sys.argv[1], "r+") as f:
        print("open", flush=True)
        time.sleep(float(sys.argv[2]))
        f.attrs["other_writer"] = 1
"""


def _hold(script, target, seconds):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(target), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stdout.readline().strip() in ("locked", "open")
    return proc


@pytest.mark.parametrize("holder", ["caskax lock", "HDF5 writer"])
def test_a_held_file_is_waited_for_then_refused(tmp_path, monkeypatch, holder):
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    if holder == "caskax lock":
        proc = _hold(HOLD_LOCK, os.path.realpath(path) + ".lock", 3.0)
        match = "locked by another process"
    else:
        proc = _hold(HOLD_OPEN, path, 3.0)
        match = "open for writing in another program"
    try:
        monkeypatch.setattr(cx.io, "_LOCK_TIMEOUT_S", 0.3)
        with pytest.raises(cx.StateFileError, match=match) as err:
            lc_model(1.0).append_state(path)
        assert str(path) in str(err.value)
        with pytest.raises(cx.StateFileError, match=match):
            lc_model().load_state(path)
        monkeypatch.setattr(cx.io, "_LOCK_TIMEOUT_S", 60.0)
        lc_model(2.0).append_state(path)  # waits for the holder, then appends
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert columns(path)["t0"].tolist() == [0.0, 2.0]
    if holder == "HDF5 writer":
        with h5py.File(path, "r") as f:
            assert f.attrs["other_writer"] == 1  # the other program's write is kept too


def test_threads_appending_take_turns(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda v: lc_model(float(v)).append_state(path), range(1, 41)))
    assert sorted(columns(path)["t0"]) == [float(v) for v in range(41)]
    assert leftovers(tmp_path) == []


# -- crash safety ----------------------------------------------------------------------------------
KILL_SCRIPT = """
    import os, sys
    import caskax as cx
    from caskax.examples.models import Gaussian1D
    path = sys.argv[1]
    if not os.path.exists(path):
        Gaussian1D("lc", t0=0.0, sigma=0.0, peak_flux=0.0).to_dynamic("t0").save_state(
            path, appendable=True)
    k = cx.io.count_samples(path)  # sample k holds the value k in every param
    print("ready", flush=True)
    while True:
        Gaussian1D("lc", t0=k, sigma=k, peak_flux=k).to_dynamic("t0").append_state(path)
        k += 1
"""


def test_repeated_sigkill_mid_append_keeps_every_committed_sample(tmp_path):
    path = tmp_path / "chain.h5"
    rng = random.Random(0)
    counts = []
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(path)],
            stdout=subprocess.PIPE,
            env=ENV,
        )
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.4))  # kill at an arbitrary moment of the loop
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        cols = columns(path)
        n = len(cols["t0"])
        counts.append(n)
        for col in cols.values():
            np.testing.assert_array_equal(col, np.arange(n))
        with h5py.File(path, "r") as f:  # plain HDF5 readers see the committed samples too
            assert f["lc/t0/value"].shape[0] >= n
        assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert counts == sorted(counts) and counts[-1] > counts[0]  # no committed sample lost


KILLED_SAVE = """
    import os, signal, sys
    import caskax.io as io
    from caskax.examples.models import Gaussian1D
    path = sys.argv[1]
    write = io._write_tree
    def write_then_die(*args):
        write(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is complete, not renamed
    io._write_tree = write_then_die
    Gaussian1D("lc", t0=9.0, sigma=9.0, peak_flux=9.0).to_dynamic("t0").save_state(path, appendable=True)
"""


@pytest.mark.parametrize("next_call", ["load_state", "count_samples", "append_state", "save_state"])
def test_killed_save_leaves_the_old_file_and_its_orphan_is_removed(tmp_path, next_call):
    path = tmp_path / "chain.h5"
    lc_model(1.0).save_state(path, appendable=True)
    out = run(KILLED_SAVE, path)
    assert out.returncode == -signal.SIGKILL
    orphans = [n for n in os.listdir(tmp_path) if n.startswith(".chain.h5.") and n.endswith(".tmp")]
    assert len(orphans) == 1
    with h5py.File(path, "r") as f:  # the old file, whole (read past caskax: no cleanup yet)
        assert f["lc/t0/value"][()].tolist() == [1.0] and f.attrs["caskax_pending"] == -1
    {
        "load_state": lambda: lc_model().load_state(path),
        "count_samples": lambda: cx.io.count_samples(path),
        "append_state": lambda: lc_model(2.0).append_state(path),
        "save_state": lambda: lc_model(3.0).save_state(path, appendable=True),
    }[next_call]()
    assert leftovers(tmp_path) == []  # the orphan and the dead process's lock file are gone
    assert cx.io.count_samples(path) >= 1


# -- disk full ----------------------------------------------------------------------------------
def test_no_room_refuses_before_writing(tmp_path, monkeypatch):
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    lc_model(1.0).append_state(path)
    before = path.read_bytes()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage._replace(free=1000))
    with pytest.raises(cx.StateFileError, match="not enough free disk space") as err:
        lc_model(2.0).append_state(path)
    assert str(path) in str(err.value)
    with pytest.raises(cx.StateFileError, match="not enough free disk space"):
        lc_model(3.0).save_state(path)
    with pytest.raises(cx.StateFileError, match="not enough free disk space"):
        cx.Chains.from_arrays(np.zeros((2, 3, 1))).save(path)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    lc_model(4.0).append_state(path)
    assert columns(path)["t0"].tolist() == [0.0, 1.0, 4.0]


def test_write_failing_mid_append_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    lc_model(1.0).append_state(path)
    write = h5py.Dataset.__setitem__
    calls = []

    def fail_second(self, key, value):
        calls.append(key)
        if len(calls) == 2:  # one param's row written, the next one's write fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", fail_second)
    with pytest.raises(cx.StateFileError, match="keeps its 2 earlier sample") as err:
        lc_model(2.0).append_state(path)
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert columns(path)["t0"].tolist() == [0.0, 1.0]  # the half-written sample is ignored
    lc_model(3.0).append_state(path)  # and written over
    cols = columns(path)
    assert cols["t0"].tolist() == [0.0, 1.0, 3.0] and cols["sigma"].tolist() == [0.0, 1.0, 3.0]


FILE_SIZE_LIMIT = """
    import os, resource, signal, sys
    import caskax as cx
    from caskax.examples.models import Gaussian1D
    path = sys.argv[1]
    cx.io._CHUNK_BYTES = 64  # small chunks (32 rows): a new one is needed soon
    Gaussian1D("lc", t0=0.0, sigma=0.0, peak_flux=0.0).to_dynamic("t0").save_state(path, appendable=True)
    # The OS refuses to grow the file past its size now (EFBIG, as a full disk gives
    # ENOSPC): appends fit until a new chunk is needed.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path), resource.RLIM_INFINITY))
    k = 1
    try:
        while True:
            Gaussian1D("lc", t0=k, sigma=k, peak_flux=k).to_dynamic("t0").append_state(path)
            k += 1
    except cx.StateFileError as err:
        print(k, err, flush=True)
"""


def test_file_that_cannot_grow_refuses_with_the_file_intact(tmp_path):
    path = tmp_path / "chain.h5"
    out = run(FILE_SIZE_LIMIT, path)
    assert out.returncode == 0, out.stderr
    k, message = out.stdout.split(" ", 1)
    assert str(path) in message and "earlier sample" in message
    cols = columns(path)
    assert len(cols["t0"]) == int(k) > 1
    for col in cols.values():
        np.testing.assert_array_equal(col, np.arange(int(k)))
    lc_model(float(k)).append_state(path)
    assert cx.io.count_samples(path) == int(k) + 1


# -- append cost ---------------------------------------------------------------------------------
def test_append_writes_in_place(tmp_path):
    """An append changes the file in place (no copy): the inode stays, and the bytes
    before the appended rows are those of the file before."""
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    for v in range(1, 5):
        lc_model(float(v)).append_state(path)
    inode = os.stat(path).st_ino
    size = os.path.getsize(path)
    lc_model(5.0).append_state(path)
    assert os.stat(path).st_ino == inode and os.path.getsize(path) == size
    assert columns(path)["t0"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


# -- bad files and arguments ---------------------------------------------------------------------
def _damaged(tmp_path, data, name="bad.h5"):
    bad = tmp_path / name
    bad.write_bytes(data)
    return bad


@pytest.mark.parametrize("cut", [0.5, 0.99, 2000, 100])
def test_truncated_file_is_a_state_file_error(tmp_path, cut):
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    lc_model(1.0).append_state(path)
    raw = path.read_bytes()
    size = int(len(raw) * cut) if isinstance(cut, float) else cut
    bad = _damaged(tmp_path, raw[:size])
    for call in (
        lambda: lc_model().load_state(bad),
        lambda: cx.io.count_samples(bad),
        lambda: lc_model().append_state(bad),
        lambda: cx.Chains.load(bad),
    ):
        with pytest.raises(cx.StateFileError) as err:
            call()
        assert str(bad) in str(err.value)


def test_garbled_metadata_is_a_state_file_error(tmp_path):
    path = tmp_path / "lc.h5"
    lc_model(1.0).save_state(path)
    raw = bytearray(path.read_bytes())
    raw[1400:1600] = b"\xff" * 200  # a symbol table node of the root group
    bad = _damaged(tmp_path, bytes(raw))
    with pytest.raises(cx.StateFileError) as err:
        lc_model().load_state(bad)
    assert str(bad) in str(err.value)


def test_chains_file_errors(tmp_path):
    missing = tmp_path / "none.h5"
    with pytest.raises(cx.StateFileError, match="no such file") as err:
        cx.Chains.load(missing)
    assert str(missing) in str(err.value)
    text = _damaged(tmp_path, b"not hdf5", "text.h5")
    with pytest.raises(cx.StateFileError, match="not an HDF5 file"):
        cx.Chains.load(text)
    state = tmp_path / "state.h5"
    lc_model().save_state(state)
    with pytest.raises(cx.StateFileError, match="no caskax chains"):
        cx.Chains.load(state)
    chains = tmp_path / "chains.h5"
    cx.Chains.from_arrays(np.zeros((2, 3, 1))).save(chains)
    with h5py.File(chains, "r+") as f:
        del f["chains/step_size"]
    with pytest.raises(cx.StateFileError, match="lacks step_size"):
        cx.Chains.load(chains)
    assert leftovers(tmp_path, keep=("text.h5", "state.h5", "chains.h5")) == []


@pytest.mark.parametrize("change", ["missing", "unknown"])
def test_node_type_missing_or_unknown(tmp_path, change):
    path = tmp_path / "lc.h5"
    lc_model(1.0).save_state(path)
    with h5py.File(path, "r+") as f:
        attrs = f["lc/sigma/value"].attrs
        if change == "missing":
            del attrs["node_type"]
        else:
            attrs["node_type"] = "frozen"
    with pytest.raises(cx.StateFileError, match="lc/sigma/value.*node_type") as err:
        lc_model().load_state(path)
    assert str(path) in str(err.value)


def test_sample_index_must_be_an_integer_in_range(tmp_path):
    plain, chain = tmp_path / "plain.h5", tmp_path / "chain.h5"
    lc_model(1.0).save_state(plain)
    lc_model().save_state(chain, appendable=True)
    lc_model(1.0).append_state(chain)
    for bad in (1.7, 1.0, "1", None, True):
        with pytest.raises(cx.StateFileError, match="must be an integer") as err:
            lc_model().load_state(chain, index=bad)
        assert str(chain) in str(err.value)
    assert float(lc_model().load_state(chain, index=np.int64(1)).t0.value) == 1.0
    for index in (0, -1):
        assert float(lc_model().load_state(plain, index=index).t0.value) == 1.0
    for index in (99, 1, -2):
        with pytest.raises(cx.StateFileError, match="not appendable.*0 or -1") as err:
            lc_model().load_state(plain, index=index)
        assert str(plain) in str(err.value)
    with pytest.raises(cx.StateFileError, match="index 2 is out of range"):
        lc_model().load_state(chain, index=2)


def test_pending_sample_is_not_read(tmp_path):
    """A sample marked pending (an append that died before committing) is invisible to
    caskax readers and written over by the next append."""
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    lc_model(1.0).append_state(path)
    with h5py.File(path, "r+") as f:  # what a kill between the writes and the commit leaves
        f.attrs["caskax_pending"] = 2
        for name in ("t0", "sigma"):
            ds = f[f"lc/{name}/value"]
            ds.resize((3,))
            ds[2] = 99.0
    assert cx.io.count_samples(path) == 2
    assert float(lc_model().load_state(path).t0.value) == 1.0
    with pytest.raises(cx.StateFileError, match="index 2 is out of range"):
        lc_model().load_state(path, index=2)
    lc_model(5.0).append_state(path)
    cols = columns(path)
    assert cols["t0"].tolist() == cols["peak_flux"].tolist() == [0.0, 1.0, 5.0]


def test_cyclic_model_is_refused_by_save_state(tmp_path):
    g = Gaussian1D("g", t0=1.0, sigma=2.0, peak_flux=1.0)
    g2 = g.set("t0", cx.Pointer(lambda s: s, g.sigma))
    cyclic = g2.set("sigma", cx.Pointer(lambda t: t, g2.t0))
    with pytest.raises(cx.GraphError, match="pointer cycle"):
        cyclic.save_state(tmp_path / "c.h5")
    assert os.listdir(tmp_path) == []


def test_lock_files_do_not_accumulate(tmp_path):
    path = tmp_path / "chain.h5"
    lc_model().save_state(path, appendable=True)
    for v in range(3):
        lc_model(float(v)).append_state(path)
        lc_model().load_state(path)
        cx.io.count_samples(path)
    cx.Chains.from_arrays(np.zeros((1, 2, 1))).save(tmp_path / "c.h5")
    cx.Chains.load(tmp_path / "c.h5")
    assert sorted(os.listdir(tmp_path)) == ["c.h5", "chain.h5"]
