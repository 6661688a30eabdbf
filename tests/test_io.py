"""State files: caskade's HDF5 layout, round trips, appending, crash safety, bad input,
and interchange with the real caskade package."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

import caskax as cx
from caskax.examples.models import Combined, Gaussian, Gaussian1D, Likelihood, Stack

# The tutorial's models written with the real caskade (numpy backend). It runs in a
# subprocess (caskade picks its backend when imported, and must not touch this process):
# ``write DIR`` saves DIR/ck_sim.h5 and DIR/ck_like2.h5 from caskade models holding
# distinctive values; ``read DIR`` loads DIR/cx_sim.h5 and DIR/cx_like2.h5 (written by
# caskax) into fresh caskade models. Both print every param's value as JSON, keyed by
# its HDF5 path.
CASKADE_SCRIPT = '''

import json
import os
import sys
import warnings

os.environ["CASKADE_BACKEND"] = "numpy"
warnings.simplefilter("ignore")

import caskade as ck  # noqa: E402
import numpy as np  # noqa: E402


class Gaussian(ck.Module):
    def __init__(self, name, x0=None, q=None, phi=None, sigma=None, flux=None):
        super().__init__(name)
        self.x0 = ck.Param("x0", x0, shape=(2,))
        self.q = ck.Param("q", q, shape=(), valid=(0, 1))
        self.phi = ck.Param("phi", phi, shape=(), valid=(0, np.pi), cyclic=True)
        self.sigma = ck.Param("sigma", sigma, shape=(), valid=(0, None))
        self.flux = ck.Param("flux", flux, shape=())


class Gaussian1D(ck.Module):
    def __init__(self, name, t0=None, sigma=None, peak_flux=None):
        super().__init__(name)
        self.t0 = ck.Param("t0", t0, shape=())
        self.sigma = ck.Param("sigma", sigma, shape=(), valid=(0, None))
        self.peak_flux = ck.Param("peak_flux", peak_flux, shape=())

    @ck.forward
    def flux(self, t, peak_flux, t0, sigma):
        return peak_flux * np.exp(-(((t + t0) / sigma) ** 2))


class Combined(ck.Module):
    def __init__(self, name, x, y, models):
        super().__init__(name)
        self.x, self.y, self.models = x, y, models


class Stack(ck.Module):
    def __init__(self, name, models):
        super().__init__(name)
        self.models = models


class Likelihood(ck.Module):
    def __init__(self, name, model, data):
        super().__init__(name)
        self.model, self.data = model, data


def sim_model(shift=0.0):
    """The single-image simulator: Combined("sim", [SN, Galaxy]) with the SN flux a
    function pointer of a light curve and a ``time`` param."""
    grid = np.linspace(-1, 1, 4)
    x, y = np.meshgrid(grid, grid, indexing="ij")
    sn = Gaussian("SN", x0=[-0.35 + shift, -0.2], q=1.0, phi=0.0, sigma=0.05)
    lc = Gaussian1D("lightcurve", t0=-3.0 + shift, sigma=2.0, peak_flux=0.25)
    time = ck.Param("time", 1.5 + shift, shape=())
    sn.flux = lambda p: p.lightcurve.flux(p.time.value)
    sn.flux.link((lc, time))
    galaxy = Gaussian("Galaxy", x0=[0.2, 0.2 + shift], q=0.6, phi=0.5, sigma=0.3, flux=1.0 + shift)
    galaxy.to_dynamic()
    return Combined("sim", x, y, [sn, galaxy])


def like2_model(n=5, shift=0.0):
    """likelihood2: n images sharing one galaxy, SN x0 of images 1.. linked to image 0's."""
    grid = np.linspace(-1, 1, 4)
    x, y = np.meshgrid(grid, grid, indexing="ij")
    galaxy = Gaussian("Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5 + shift, sigma=0.3, flux=1.0)
    galaxy.to_dynamic()
    images = []
    for i in range(n):
        sn = Gaussian(f"SN{i}", x0=[-0.35 + shift, -0.2], q=1.0, phi=0.0, sigma=0.05,
                      flux=0.2 + shift * i)
        sn.x0.to_dynamic()
        sn.flux.to_dynamic()
        images.append(Combined(f"image{i}", x, y, [sn, galaxy]))
        if i > 0:
            sn.x0 = images[0].models[0].x0
    return Likelihood("likelihood2", Stack("secondmodel", images), np.zeros((n, 4, 4)))


def values(module):
    out = {}

    def visit(node, prefix):
        for key, child in node.children.items():
            path = prefix + key
            if isinstance(child, ck.Param):
                try:
                    v = child.value
                except Exception:
                    v = None
                out[path] = {
                    "value": None if v is None else np.asarray(v, dtype=float).tolist(),
                    "kind": child.node_type,
                }
            visit(child, path + "/")

    visit(module, module.name + "/")
    return out


if __name__ == "__main__":
    mode, folder = sys.argv[1], sys.argv[2]
    result = {}
    if mode == "write":
        sim, like2 = sim_model(shift=0.125), like2_model(shift=0.125)
        sim.save_state(os.path.join(folder, "ck_sim.h5"))
        like2.save_state(os.path.join(folder, "ck_like2.h5"))
    elif mode == "write_appendable":  # two samples of like2, the shared galaxy's phi changed
        like2 = like2_model(shift=0.125)
        path = os.path.join(folder, "ck_app.h5")
        like2.save_state(path, appendable=True)
        like2.model.models[0].models[1].phi.value = 0.75
        like2.append_state(path)
        print(json.dumps({"like2": values(like2)}))
        sys.exit(0)
    elif mode == "append":  # read caskax's appendable file, append one sample to it
        like2 = like2_model()
        path = os.path.join(folder, "cx_app.h5")
        like2.load_state(path, index=0)
        first = values(like2)
        like2.load_state(path)
        last = values(like2)
        like2.model.models[0].models[1].phi.value = 1.25
        like2.append_state(path)
        print(json.dumps({"first": first, "last": last}))
        sys.exit(0)
    else:
        sim, like2 = sim_model(), like2_model()
        sim.load_state(os.path.join(folder, "cx_sim.h5"))
        like2.load_state(os.path.join(folder, "cx_like2.h5"))
    result = {"sim": values(sim), "like2": values(like2)}
    print(json.dumps(result))
'''


# -- models ---------------------------------------------------------------------------------
def grid(n=4):
    axis = jnp.linspace(-1.0, 1.0, n)
    return jnp.meshgrid(axis, axis, indexing="ij")


def sim_model(shift=0.0, time_value=1.5):
    """The tutorial's single-image simulator: SN flux a function pointer of a light
    curve and a time param; the galaxy dynamic."""
    x, y = grid()
    lc = Gaussian1D("lightcurve", t0=-3.0 + shift, sigma=2.0, peak_flux=0.25)
    t = cx.Param("time", time_value, shape=())
    sn = Gaussian("SN", x0=[-0.35 + shift, -0.2], q=1.0, phi=0.0, sigma=0.05)
    sn = sn.set("flux", cx.Pointer(lambda lc, t: lc.flux(t), lc, t))
    galaxy = Gaussian(
        "Galaxy", x0=[0.2, 0.2 + shift], q=0.6, phi=0.5, sigma=0.3, flux=1.0 + shift
    ).to_dynamic()
    return Combined("sim", x, y, [sn, galaxy])


def like2_model(n=5, shift=0.0):
    """likelihood2: n images sharing one galaxy; SN x0 of images 1.. linked to image 0's."""
    x, y = grid()
    galaxy = Gaussian(
        "Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5 + shift, sigma=0.3, flux=1.0
    ).to_dynamic()
    images = []
    for i in range(n):
        sn = Gaussian(
            f"SN{i}", x0=[-0.35 + shift, -0.2], q=1.0, phi=0.0, sigma=0.05, flux=0.2 + shift * i
        ).to_dynamic("x0", "flux")
        if i > 0:
            sn = sn.set("x0", images[0].models[0].x0)
        images.append(Combined(f"image{i}", x, y, [sn, galaxy]))
    return Likelihood("likelihood2", Stack("secondmodel", images), jnp.zeros((n, 4, 4)))


class Holder(cx.Module):
    """Every kind of param, and list/dict fields."""

    a: cx.Param
    b: cx.Param
    live: cx.Param
    ptr: cx.Param
    fptr: cx.Param
    items: list
    table: dict

    def __init__(self, name="holder"):
        super().__init__(name)
        self.a = cx.Param("a", 1.0, units="kpc", valid=(0, 10))
        self.b = cx.Param("b", [1.0, 2.0, 3.0], dynamic=True, valid=(0, None))
        self.live = cx.Param("live", None, shape=(), dynamic=False)
        self.ptr = cx.Param("ptr", self.a)
        self.fptr = cx.Param("fptr", cx.Pointer(lambda a, b: a * b, self.a, self.b))
        self.items = [
            Gaussian1D("one", t0=1.0, sigma=2.0, peak_flux=3.0),
            Gaussian1D("two", t0=4.0, sigma=5.0, peak_flux=6.0),
        ]
        self.table = {"first": cx.Param("first", [[1.0, 2.0]]), "second": cx.Param("second")}


def param_values(module):
    """path -> (kind, value or None) for every param, by first-visit path."""
    from caskax import graph

    w = graph.walk(module)
    out = {}
    for uid, node in w.nodes.items():
        if isinstance(node, cx.Param):
            v = None if node.value is None else np.asarray(node.value).tolist()
            out[w.paths[uid]] = (node.kind, v)
    return out


# -- layout -----------------------------------------------------------------------------------
def test_layout_matches_caskade(tmp_path):
    path = tmp_path / "sim.h5"
    sim_model().save_state(path)
    with h5py.File(path, "r") as f:
        assert list(f) == ["sim"]
        assert sorted(f["sim/models"]) == ["Galaxy", "SN"]  # list members keyed by name
        x0 = f["sim/models/Galaxy/x0/value"]
        assert x0.shape == (2,) and x0.dtype == jnp.zeros(()).dtype  # float32 unless x64
        assert set(x0.attrs) == {"node_type", "appendable", "cyclic", "units"}
        assert x0.attrs["node_type"] == "dynamic" and x0.attrs["units"] == "None"
        assert x0.attrs["appendable"].dtype == np.bool_ and not x0.attrs["appendable"]
        phi = f["sim/models/SN/phi/value"].attrs
        assert phi["node_type"] == "static" and bool(phi["cyclic"])
        assert phi["valid_left"].dtype == np.float64 and phi["valid_right"] == np.float64(np.pi)
        sigma = f["sim/models/SN/sigma/value"].attrs
        assert "valid_left" in sigma and "valid_right" not in sigma
        flux = f["sim/models/SN/flux"]  # a function pointer: its inputs below it, by name
        assert flux["value"].attrs["node_type"] == "pointer"
        assert float(flux["value"][()]) == pytest.approx(0.25 * np.exp(-(((1.5 - 3.0) / 2.0) ** 2)))
        assert sorted(flux) == ["lightcurve", "time", "value"]
        assert float(flux["lightcurve/t0/value"][()]) == -3.0


def test_missing_values_are_the_string_None(tmp_path):
    path = tmp_path / "sim.h5"
    sim_model(time_value=None).save_state(path)  # time dynamic with no value: flux uncomputable
    with h5py.File(path, "r") as f:
        for where in ("sim/models/SN/flux/time/value", "sim/models/SN/flux/value"):
            ds = f[where]
            assert ds[()] == b"None" and h5py.check_string_dtype(ds.dtype) is not None
        assert f["sim/models/SN/flux/time/value"].attrs["node_type"] == "dynamic"


def test_shared_nodes_are_written_once_as_hard_links(tmp_path):
    path = tmp_path / "like2.h5"
    like2_model().save_state(path)
    with h5py.File(path, "r") as f:
        root = f["likelihood2/model/models"]
        assert sorted(root) == [f"image{i}" for i in range(5)]
        gal = root["image0/models/Galaxy"]
        for i in range(1, 5):
            assert root[f"image{i}/models/Galaxy"] == gal  # the same HDF5 object
            x0 = root[f"image{i}/models/SN{i}/x0"]
            assert x0["value"].attrs["node_type"] == "pointer"
            assert x0["x0"] == root["image0/models/SN0/x0"]  # link target under the pointer
        objects = set()
        f.visit(lambda name: objects.add(name.split("/")[-1]) if name.endswith("Galaxy") else None)
        assert objects == {"Galaxy"}


# -- round trips ------------------------------------------------------------------------------
def test_round_trip_every_kind(tmp_path):
    path = tmp_path / "holder.h5"
    m = Holder()
    m.save_state(path)
    changed = m.set(a=2.5).set("b", [7.0, 8.0, 9.0]).set("items[1].t0", 40.0)
    changed = changed.to_dynamic("table['first']").to_static("b")
    loaded = changed.load_state(path)
    assert param_values(loaded) == param_values(m)
    assert loaded.a.units == "kpc" and loaded.a.valid == (0.0, 10.0)
    assert loaded.live.kind == "live" and loaded.table["second"].kind == "dynamic"
    assert loaded.ptr.kind == "pointer" and loaded.fptr.kind == "pointer"
    # the receiver is untouched, and the result is a new tree
    assert float(changed.a.value) == 2.5 and changed.b.kind == "static"
    assert loaded is not changed and loaded.uid == changed.uid


def test_shared_nodes_load_as_one_node(tmp_path):
    path = tmp_path / "like2.h5"
    model = like2_model()
    n = model.get_values().size
    target = model.set_values(jnp.arange(n, dtype=jnp.float32) / 10 + 0.05)
    target.save_state(path)
    loaded = model.load_state(path)
    np.testing.assert_allclose(loaded.get_values(), target.get_values())
    assert len(loaded.dynamic_params) == len(model.dynamic_params)
    imgs = loaded.model.models
    gals = [im.models[1] for im in imgs]
    assert all(g.uid == gals[0].uid for g in gals)
    for g in gals:
        np.testing.assert_allclose(g.flux.value, gals[0].flux.value)
    # pointers follow the loaded target
    f = cx.compile(loaded.model)
    img = f(loaded.get_values())
    assert img.shape == (5, 4, 4)
    assert float(imgs[3].models[0].x0.ptr.inputs[0].value[0]) == float(
        imgs[0].models[0].x0.value[0]
    )


def test_appendable_sample_axis_and_index(tmp_path):
    path = tmp_path / "chain.h5"
    m = sim_model()
    m.save_state(path, appendable=True)
    for k in range(1, 3):
        m.set("models[1].x0", [0.1 * k, 0.2 * k]).append_state(path)
    with h5py.File(path, "r") as f:
        ds = f["sim/models/Galaxy/x0/value"]
        assert ds.shape == (3, 2) and ds.maxshape == (None, 2)
        assert ds.chunks[1:] == (2,) and ds.compression is None  # unfiltered: rows written in place
        assert bool(ds.attrs["appendable"]) and f.attrs["caskax_pending"] == -1
        assert f["sim/models/SN/flux/value"].shape == (3,)  # pointers append their value
    assert cx.io.count_samples(path) == 3
    for index, want in ((0, [0.2, 0.2]), (1, [0.1, 0.2]), (-1, [0.2, 0.4]), (2, [0.2, 0.4])):
        got = m.load_state(path, index=index).models[1].x0.value
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(b"old")
    sim_model().save_state(path)
    assert h5py.is_hdf5(path)
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]  # no temporary file left behind


# -- crash safety -----------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import caskax as cx
    from caskax.examples.models import Gaussian1D
    path = sys.argv[1]
    lc = Gaussian1D("lc", t0=0.0, sigma=0.0, peak_flux=0.0).to_dynamic("t0")
    lc.save_state(path, appendable=True)
    k = 0
    while True:
        k += 1
        lc.set(t0=float(k), sigma=float(k), peak_flux=float(k)).append_state(path)
        if k == 3:
            print("ready", flush=True)
    """
)


def test_sigkill_during_appends_leaves_earlier_samples(tmp_path):
    path = tmp_path / "chain.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.4)  # a good number of appends, then kill at an arbitrary moment
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    with h5py.File(path, "r") as f:
        columns = [f[f"lc/{name}/value"][()] for name in ("t0", "sigma", "peak_flux")]
    n = len(columns[0])
    assert n >= 4  # the first save and at least 3 appends
    for col in columns:  # every param has every sample: no half-done append
        np.testing.assert_array_equal(col, np.arange(n, dtype=col.dtype))
    lc = Gaussian1D("lc", t0=0.0, sigma=0.0, peak_flux=0.0)
    assert float(lc.load_state(path, index=n - 1).sigma.value) == n - 1


# -- bad input --------------------------------------------------------------------------------
def _snapshot(path):
    return path.read_bytes()


def test_structure_mismatch_names_first_missing_and_extra(tmp_path):
    path = tmp_path / "like2.h5"
    like2_model(n=3).save_state(path)
    with pytest.raises(cx.GraphError) as err:
        like2_model(n=4).load_state(path)
    assert "likelihood2/model/models/image3" in str(err.value) and "missing" in str(err.value)
    x, y = grid()
    other = like2_model(n=3)
    renamed = other.set("model.models[2]", Combined("imageX", x, y, other.model.models[2].models))
    with pytest.raises(cx.GraphError) as err:
        renamed.load_state(path)
    msg = str(err.value)
    assert "likelihood2/model/models/imageX" in msg and "likelihood2/model/models/image2" in msg


def test_wrong_root_shape_index_and_not_hdf5(tmp_path):
    path = tmp_path / "lc.h5"
    lc = Gaussian1D("lc", t0=1.0, sigma=2.0, peak_flux=3.0)
    lc.save_state(path)
    with pytest.raises(cx.StateFileError, match="root group 'other'.*'lc'"):
        Gaussian1D("other", t0=1.0, sigma=2.0, peak_flux=3.0).load_state(path)

    class Vec(cx.Module):
        t0: cx.Param
        sigma: cx.Param
        peak_flux: cx.Param

        def __init__(self):
            super().__init__("lc")
            self.t0 = cx.Param("t0", [1.0, 2.0], shape=(2,))
            self.sigma, self.peak_flux = cx.Param("sigma", 1.0), cx.Param("peak_flux", 1.0)

    with pytest.raises(cx.ShapeError, match="lc/t0"):
        Vec().load_state(path)
    lc.save_state(tmp_path / "app.h5", appendable=True)
    with pytest.raises(cx.StateFileError, match="index 1 is out of range"):
        lc.load_state(tmp_path / "app.h5", index=1)
    with pytest.raises(cx.StateFileError, match="index -2"):
        lc.load_state(tmp_path / "app.h5", index=-2)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(cx.StateFileError, match="not an HDF5 file"):
        lc.load_state(text)
    with pytest.raises(cx.StateFileError, match="not an HDF5 file"):
        lc.append_state(text)
    with pytest.raises(cx.StateFileError, match="no such file"):
        lc.load_state(tmp_path / "missing.h5")


def test_append_refusals_leave_file_untouched(tmp_path):
    plain = tmp_path / "plain.h5"
    lc = Gaussian1D("lc", t0=1.0, sigma=2.0, peak_flux=3.0)
    lc.save_state(plain)
    before = _snapshot(plain)
    with pytest.raises(cx.StateFileError, match="not appendable"):
        lc.append_state(plain)
    assert _snapshot(plain) == before

    chain = tmp_path / "chain.h5"
    sim = sim_model()
    sim.save_state(chain, appendable=True)
    before = _snapshot(chain)
    with pytest.raises(cx.ShapeError, match="sim/models/Galaxy/x0"):
        sim.set("models[1].x0", jnp.zeros((3, 2))).append_state(chain)  # batched now
    x, y = grid()
    bigger = Combined(
        "sim", x, y, sim.models + [Gaussian1D("extra", t0=1.0, sigma=1.0, peak_flux=1.0)]
    )
    with pytest.raises(cx.GraphError, match="missing from the file, first 'sim/models/extra'"):
        bigger.append_state(chain)
    with pytest.raises(cx.StateFileError, match="root group"):
        Gaussian1D("lc", t0=1.0, sigma=2.0, peak_flux=3.0).append_state(chain)
    assert _snapshot(chain) == before
    assert sorted(os.listdir(tmp_path)) == ["chain.h5", "plain.h5"]


def test_name_collision_is_refused_before_writing(tmp_path):
    x, y = grid()
    twins = Combined(
        "twins",
        x,
        y,
        [
            Gaussian1D("lc", t0=1.0, sigma=1.0, peak_flux=1.0),
            Gaussian1D("lc", t0=2.0, sigma=1.0, peak_flux=1.0),
        ],
    )
    with pytest.raises(cx.GraphError, match="twins/models/lc"):
        twins.save_state(tmp_path / "t.h5")
    assert not os.listdir(tmp_path)


# -- interchange with caskade -----------------------------------------------------------------
def _caskade(mode, folder):
    env = {**os.environ, "CASKADE_BACKEND": "numpy"}
    out = subprocess.run(
        [sys.executable, "-c", CASKADE_SCRIPT, mode, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _h5_values(module):
    """HDF5 path -> value for every param, as CASKADE_SCRIPT's ``values`` reports them."""
    from caskax import graph

    out = {}

    def visit(node, prefix):
        for child in graph.children(node):
            path = prefix + "/".join(child.key)
            if isinstance(child.node, cx.Param):
                p = child.node
                v = p.value
                if p.pointer:
                    v = graph.fill(p, {}).value
                out[path] = None if v is None else np.asarray(v, dtype=float).tolist()
            visit(child.node, path + "/")

    visit(module, module.name + "/")
    return out


def _assert_same(cx_values, ck_values):
    assert set(cx_values) == set(ck_values)
    for path, v in cx_values.items():
        if v is None:
            assert ck_values[path]["value"] is None, path
        else:
            np.testing.assert_allclose(v, ck_values[path]["value"], rtol=1e-6, err_msg=path)


@pytest.mark.caskade
def test_caskade_files_load_into_caskax(tmp_path):
    pytest.importorskip("caskade")
    ck = _caskade("write", tmp_path)
    sim = sim_model().load_state(tmp_path / "ck_sim.h5")
    like2 = like2_model().load_state(tmp_path / "ck_like2.h5")
    _assert_same(_h5_values(sim), ck["sim"])
    _assert_same(_h5_values(like2), ck["like2"])
    assert sim.models[1].x0.kind == "dynamic" and sim.models[0].flux.kind == "pointer"
    assert float(sim.models[0].flux.ptr.inputs[1].value) == 1.625
    # the caskade file's shared galaxy is one node in caskax
    assert len({im.models[1].uid for im in like2.model.models}) == 1
    assert like2.get_values().size == like2_model().get_values().size


@pytest.mark.caskade
def test_caskax_files_load_into_caskade(tmp_path):
    pytest.importorskip("caskade")
    sim = sim_model(shift=0.25, time_value=2.0)
    like2 = like2_model(shift=0.25)
    sim.save_state(tmp_path / "cx_sim.h5")
    like2.save_state(tmp_path / "cx_like2.h5")
    ck = _caskade("read", tmp_path)
    _assert_same(_h5_values(sim), ck["sim"])
    _assert_same(_h5_values(like2), ck["like2"])
    kinds = {p: v["kind"] for p, v in ck["like2"].items()}
    assert kinds["likelihood2/model/models/image0/models/Galaxy/q"] == "dynamic"
    assert kinds["likelihood2/model/models/image2/models/SN2/x0"] == "pointer"


GALAXY_PHI = "model.models[0].models[1].phi"


def galaxy_phi(model):
    return float(model.model.models[0].models[1].phi.value)


@pytest.mark.caskade
def test_caskade_appendable_file_takes_caskax_appends(tmp_path):
    """caskade's appendable files (gzip chunks) take caskax appends: the first one
    rewrites the file once in the in-place layout, keeping every sample and hard link."""
    pytest.importorskip("caskade")
    ck = _caskade("write_appendable", tmp_path)
    path = tmp_path / "ck_app.h5"
    galaxy = "likelihood2/model/models/image0/models/Galaxy"
    with h5py.File(path, "r") as f:
        assert f[f"{galaxy}/phi/value"].compression == "gzip"
    model = like2_model()
    assert cx.io.count_samples(path) == 2
    first, last = model.load_state(path, index=0), model.load_state(path)
    _assert_same(_h5_values(last), ck["like2"])
    assert galaxy_phi(first) == 0.625
    assert galaxy_phi(last) == 0.75
    last.set(GALAXY_PHI, 1.0).append_state(path)
    last.set(GALAXY_PHI, 1.5).append_state(path)
    assert cx.io.count_samples(path) == 4
    phis = [galaxy_phi(model.load_state(path, index=i)) for i in range(4)]
    assert phis == [0.625, 0.75, 1.0, 1.5]
    np.testing.assert_allclose(model.load_state(path, index=1).get_values(), last.get_values())
    with h5py.File(path, "r") as f:
        ds = f[f"{galaxy}/phi/value"]
        assert ds.compression is None and ds.shape == (4,) and f.attrs["caskax_pending"] == -1
        root = f["likelihood2/model/models"]
        assert root["image3/models/Galaxy"] == root["image0/models/Galaxy"]  # still one group
        assert ds.attrs["node_type"] == "dynamic" and bool(ds.attrs["cyclic"])


@pytest.mark.caskade
def test_caskade_reads_and_appends_to_caskax_appendable_files(tmp_path):
    pytest.importorskip("caskade")
    path = tmp_path / "cx_app.h5"
    model = like2_model(shift=0.25)
    model.save_state(path, appendable=True)
    second = model.set(GALAXY_PHI, 0.5)
    second.append_state(path)
    ck = _caskade("append", tmp_path)
    _assert_same(_h5_values(model), ck["first"])
    _assert_same(_h5_values(second), ck["last"])
    assert cx.io.count_samples(path) == 3  # caskade's append counts
    phis = [galaxy_phi(like2_model().load_state(path, index=i)) for i in range(3)]
    assert phis == [0.75, 0.5, 1.25]
    second.set(GALAXY_PHI, 2.0).append_state(path)  # and caskax appends after it
    assert galaxy_phi(like2_model().load_state(path)) == 2.0
