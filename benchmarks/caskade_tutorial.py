"""caskade's worked example ("Example: SN Light-Curve", caskade 1.1.5
docs/source/notebooks/WorkedExample.ipynb), its analysis steps as one timed script on
torch, with no plotting: the peer of ``python -m caskax.examples.sn_lightcurve`` in
`benchmarks/example.py` (issue 7 figure 7).

    python benchmarks/caskade_tutorial.py [--threads N] [--quick] [--json FILE]

Steps, as the notebook runs them (same calls, same order, same seeds):

0. mock data: the true simulator (SN flux a pointer to a light curve of a ``time``
   param) plus the notebook's ``Noiser``, ``torch.manual_seed(1123)``, 5 epochs of 50x50;
1. each image alone: start = values x (1 + 0.05 N), ``scipy.optimize.minimize`` Nelder-Mead
   on ``-likelihood(torch.tensor(x))``, then ``torch.autograd.functional.hessian`` for the
   flux sigma, the model image and residuals;
2. the joint model (shared galaxy, linked SN positions): Nelder-Mead, then the hessian of
   the 5 fluxes with everything else static;
3. the SN fluxes as pointers to a light-curve module: Nelder-Mead from where stage 2
   left the shared params, then the hessian of the 3 light-curve params;
4. the hierarchical model (``torch.vmap`` over epochs, live flux), emcee: 32 walkers,
   start values x (1 + 0.1 N), 100 burn-in steps, reset, 1000 steps, vectorised.

The module classes are the benchmark's copy of the tutorial's (`benchmarks/models.py`,
which the other caskade benchmarks use; the hierarchical model takes its pixel grid and
vmap as arguments instead of reading globals); ``Noiser`` is the notebook's. Each stage's
seconds, and what it recovered, go to ``--json`` after every stage (a timed-out run keeps
the stages it finished). Diagnostics of the emcee chain (arviz) are computed after the
clock stops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CASKADE_BACKEND", "torch")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)"
    )
    ap.add_argument("--quick", action="store_true", help="emcee 50 + 200 steps (smoke run)")
    ap.add_argument("--json", default=None, help="write per-stage seconds and results here")
    args = ap.parse_args(argv)
    t_import = time.perf_counter()

    import caskade as ck
    import emcee
    import numpy as np
    import torch
    from scipy.optimize import minimize
    from torch import vmap
    from torch.autograd.functional import hessian

    from .models import _caskade_classes

    if args.threads:
        torch.set_num_threads(args.threads)
    C = _caskade_classes()
    Gaussian, Gaussian1D, Combined = C["Gaussian"], C["Gaussian1D"], C["Combined"]
    Stack, Likelihood, HierarchicalModel = C["Stack"], C["Likelihood"], C["HierarchicalModel"]
    burn, steps = (50, 200) if args.quick else (100, 1000)

    class Noiser(ck.Module):
        def __init__(self, name, model, read_noise=0.1, exp_time=100):
            super().__init__(name)
            self.model = model
            self.read_noise = read_noise
            self.exp_time = exp_time

        @ck.forward
        def __call__(self):
            img = self.model()
            read_noise = torch.randn_like(img) * self.read_noise
            poisson_noise = torch.randn_like(img) * (img * self.exp_time).sqrt() / self.exp_time
            return img + read_noise + poisson_noise

    out = dict(
        config=dict(
            threads=torch.get_num_threads(),
            quick=args.quick,
            emcee_burn=burn,
            emcee_steps=steps,
            torch=torch.__version__,
            caskade=ck.__version__,
        ),
        import_seconds=time.perf_counter() - t_import,
        stages={},
    )

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))

    total = time.perf_counter()
    clock = [time.perf_counter()]

    def lap(stage, **res):
        now = time.perf_counter()
        out["stages"][stage] = dict(seconds=now - clock[0], **res)
        print(f"[{stage}] {now - clock[0]:.2f} s", flush=True)
        clock[0] = now
        out["total_seconds"] = now - total
        save()

    # -- 0. mock data ------------------------------------------------------------------------
    Nobs, imgsize, sigma_read, exp_time = 5, 50, 0.1, 25
    imgx, imgy = torch.meshgrid(
        torch.linspace(-1, 1, imgsize), torch.linspace(-1, 1, imgsize), indexing="ij"
    )
    SN = Gaussian("SN", x0=[-0.35, -0.2], q=1.0, phi=0.0, sigma=0.05)
    SN_lightcurve = Gaussian1D("lightcurve", t0=-3.0, sigma=2.0, peak_flux=0.25)
    time_p = ck.Param("time")
    SN.flux = lambda p: p.lightcurve.flux(p.time.value)
    SN.flux.link((SN_lightcurve, time_p))
    Galaxy = Gaussian("Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5, sigma=0.3, flux=1.0)
    sim = Combined("sim", imgx, imgy, [SN, Galaxy])
    times = torch.linspace(0, 6, Nobs)
    data = torch.zeros((Nobs, imgsize, imgsize))
    true_LC = SN_lightcurve.flux(times).detach().numpy()
    torch.manual_seed(1123)
    noise_sim = Noiser("noise_sim", sim, read_noise=sigma_read, exp_time=exp_time)
    for i, t in enumerate(times):
        data[i] = noise_sim([t])
    lap("stage0", true_flux=true_LC.tolist())

    # -- 1. each image alone -----------------------------------------------------------------
    SNmodel = Gaussian("SN", x0=[-0.35, -0.2], q=1.0, phi=0.0, sigma=0.05, flux=0.2)
    SNmodel.x0.to_dynamic()
    SNmodel.flux.to_dynamic()
    Galaxymodel = Gaussian("Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5, sigma=0.3, flux=1.0)
    Galaxymodel.to_dynamic()
    firstmodel = Combined("firstmodel", imgx, imgy, [SNmodel, Galaxymodel])
    likelihood = Likelihood(
        "likelihood", firstmodel, data[0], sigma_read=sigma_read, exp_time=exp_time
    )
    light_curve_flux, light_curve_sigma, model_images, model_residuals, nfev = [], [], [], [], []
    for i in range(Nobs):
        likelihood.data = data[i]
        params = likelihood.get_values("array")
        params += torch.randn_like(params) * params * 0.05
        res = minimize(lambda x: -likelihood(torch.tensor(x)).numpy(), params, method="Nelder-Mead")
        light_curve_flux.append(float(res.x[2]))
        nfev.append(int(res.nfev))
        hess = -hessian(likelihood, torch.tensor(res.x), strict=True)
        hess_inv = torch.linalg.inv(hess)
        light_curve_sigma.append(hess_inv[2, 2].abs().sqrt().item())
        model_images.append(firstmodel(torch.tensor(res.x)).detach().numpy())
        model_residuals.append(likelihood.residuals(torch.tensor(res.x))[0].detach().numpy())
    lap("stage1", flux=light_curve_flux, sigma=light_curve_sigma, nfev=nfev)

    # -- 2. joint model ------------------------------------------------------------------------
    Galaxymodel = Gaussian("Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5, sigma=0.3, flux=1.0)
    Galaxymodel.to_dynamic()
    imgmodels = []
    for i in range(Nobs):
        SNmodel = Gaussian(f"SN{i}", x0=[-0.35, -0.2], q=1.0, phi=0.0, sigma=0.05, flux=0.2)
        SNmodel.x0.to_dynamic()
        SNmodel.flux.to_dynamic()
        imgmodel = Combined(f"image{i}", imgx, imgy, [SNmodel, Galaxymodel])
        imgmodels.append(imgmodel)
        if i > 0:
            SNmodel.x0 = imgmodels[0].models[0].x0
    secondmodel = Stack("secondmodel", imgmodels)
    likelihood2 = Likelihood(
        "likelihood2", secondmodel, data, sigma_read=sigma_read, exp_time=exp_time
    )
    params = likelihood2.get_values()
    params += torch.randn_like(params) * params * 0.05
    res = minimize(lambda x: -likelihood2(torch.tensor(x)).numpy(), params, method="Nelder-Mead")
    model_imgs = secondmodel(torch.tensor(res.x))
    residuals = likelihood2.residuals(torch.tensor(res.x))[0]
    likelihood2.set_values(torch.tensor(res.x))
    likelihood2.to_static(children_only=False)
    light_curve_flux = []
    for model in secondmodel.models:
        light_curve_flux.append(model.models[0].flux.value.item())
        model.models[0].flux.to_dynamic()
    hess = -hessian(likelihood2, likelihood2.get_values(), strict=True)
    hess_inv = torch.linalg.inv(hess)
    light_curve_sigma = torch.sqrt(torch.diag(hess_inv)).numpy()
    lap(
        "stage2",
        flux=light_curve_flux,
        sigma=light_curve_sigma.tolist(),
        nfev=int(res.nfev),
        loglike=float(-res.fun),
    )

    # -- 3. light-curve function pointers ----------------------------------------------------
    secondmodel.models[0].models[1].to_dynamic()
    secondmodel.models[0].models[0].x0.to_dynamic()
    lightcurvemodel = Gaussian1D("lightcurvemodel", t0=-3.0, sigma=2.5, peak_flux=0.25)
    lightcurvemodel.to_dynamic()
    for i in range(Nobs):
        secondmodel.models[i].models[0].flux = lambda p: p.lightcurvemodel.flux(t=p.eval_t)
        secondmodel.models[i].models[0].flux.link(lightcurvemodel)
        secondmodel.models[i].models[0].flux.eval_t = times[i].clone()
    params = likelihood2.get_values()
    params += torch.randn_like(params) * params * 0.05
    res = minimize(lambda x: -likelihood2(torch.tensor(x)).numpy(), params, method="Nelder-Mead")
    model_imgs = secondmodel(torch.tensor(res.x))  # noqa: F841 (the notebook plots these)
    residuals = likelihood2.residuals(torch.tensor(res.x))[0]  # noqa: F841
    likelihood2.set_values(torch.tensor(res.x))
    light_curve_flux = [model.models[0].flux.value.item() for model in secondmodel.models]
    likelihood2.to_static(False)
    lightcurvemodel.to_dynamic()
    fit_vals = likelihood2.get_values()
    hess = -hessian(likelihood2, fit_vals, strict=True)
    hess_inv = torch.linalg.inv(hess).numpy()
    lc_sigma = np.sqrt(np.abs(np.diag(hess_inv)))
    lap(
        "stage3",
        t0=[fit_vals[0].item(), float(lc_sigma[0])],
        sigma=[fit_vals[1].item(), float(lc_sigma[1])],
        peak_flux=[fit_vals[2].item(), float(lc_sigma[2])],
        flux=light_curve_flux,
        nfev=int(res.nfev),
        loglike=float(-res.fun),
    )
    secondmodel.models[0].models[1].to_dynamic()
    secondmodel.models[0].models[0].x0.to_dynamic()

    # -- 4. hierarchical model + emcee -----------------------------------------------------------
    SNmodel = Gaussian("SN", x0=[-0.35, -0.2], q=1.0, phi=0.0, sigma=0.05)
    SNmodel.flux.to_static(None)
    SNmodel.x0.to_dynamic()
    Galaxymodel = Gaussian("Galaxy", x0=[0.2, 0.2], q=0.6, phi=0.5, sigma=0.3, flux=1.0)
    Galaxymodel.to_dynamic()
    lightcurvemodel = Gaussian1D("lightcurvemodel", t0=-3.0, sigma=2.5, peak_flux=0.25)
    lightcurvemodel.to_dynamic()
    hierarchicalmodel = HierarchicalModel(
        "hierarchical", SNmodel, Galaxymodel, lightcurvemodel, times, imgx, imgy, vmap
    )
    likelihood3 = Likelihood(
        "likelihood3", hierarchicalmodel, data, sigma_read=sigma_read, exp_time=exp_time
    )
    vsim = torch.vmap(likelihood3)

    def density(x):
        return vsim(torch.as_tensor(x, dtype=torch.float32)).numpy()

    params = likelihood3.get_values()
    nwalkers = 32
    ndim = len(params)
    sampler = emcee.EnsembleSampler(nwalkers, ndim, density, vectorize=True)
    params = params * (1 + 0.1 * torch.randn(nwalkers, ndim, dtype=torch.float32))
    state = sampler.run_mcmc(params, burn, skip_initial_state_check=True)
    sampler.reset()
    state = sampler.run_mcmc(state, steps)
    chain = sampler.get_chain()  # [steps, walkers, dim]
    lap("stage4")

    # diagnostics, off the clock (walkers as chains; ESS is not meaningful for emcee's
    # correlated walkers, but it is the yardstick used for every sampler here)
    import arviz as az

    ds = az.convert_to_dataset({"x": np.swapaxes(chain, 0, 1).astype(np.float64)})
    names = [
        "SN.x0[0]",
        "SN.x0[1]",
        "t0",
        "sigma",
        "peak_flux",
        "Galaxy.x0[0]",
        "Galaxy.x0[1]",
        "Galaxy.q",
        "Galaxy.phi",
        "Galaxy.sigma",
        "Galaxy.flux",
    ]
    flat = chain.reshape(-1, ndim)
    out["stages"]["stage4"].update(
        min_ess_bulk=float(np.min(np.asarray(az.ess(ds, method="bulk")["x"]))),
        max_rhat=float(np.max(np.asarray(az.rhat(ds)["x"]))),
        acceptance=float(np.mean(sampler.acceptance_fraction)),
        mean={n: float(v) for n, v in zip(names, flat.mean(0))},
        sd={n: float(v) for n, v in zip(names, flat.std(0))},
    )
    save()
    print(
        f"total {out['total_seconds']:.1f} s (after imports); "
        f"light curve (stage 3): t0 {fit_vals[0].item():.3f}, sigma {fit_vals[1].item():.3f}, "
        f"peak {fit_vals[2].item():.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
