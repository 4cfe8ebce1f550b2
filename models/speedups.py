"""Speed settings of a loaded diffusion pipeline: channels-last, fused self-attention projections, torch.compile."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from maskforge.models.diffusion_config import CUDA_GRAPH_MODES, DiffusionConfig

#: The blocks compile_scope "blocks" compiles when the UNet names none (diffusers' UNet2DConditionModel names these).
REPEATED_BLOCKS = ("BasicTransformerBlock",)
#: Dynamo's compile limit per code object: stock and capture variants, inference and TI training, a few batch sizes.
RECOMPILE_LIMIT = 32


class SpeedupError(ValueError):
    """A speed setting that cannot be applied to a model: names the setting and the model."""


@dataclass(frozen=True)
class SpeedupPlan:
    """The resolved speed settings of a diffusion section on one device ("auto" decided)."""

    compile: bool
    mode: str = "default"
    channels_last: bool = False
    fuse_qkv: bool = False
    backend: str = "inductor"  # tests trace with "aot_eager": same graphs, no code generation
    scope: str = "model"  # "blocks": diffusers' regional compilation of the repeated transformer blocks

    def __post_init__(self) -> None:
        """Refuse a scope other than model or blocks (never a silent whole-model compile)."""
        if self.scope not in ("model", "blocks"):
            raise SpeedupError(f"compile_scope: expected 'model' or 'blocks', got {self.scope!r}")
        if self.compile and self.scope == "blocks" and self.mode in CUDA_GRAPH_MODES:
            raise SpeedupError(f"compile_scope blocks: mode {self.mode!r} captures CUDA graphs; use default")

    def compile_kwargs(self) -> dict:
        """torch.compile's backend, mode and fullgraph for this plan (a graph break is an error at the first call,
        never a silently half-eager model)."""
        mode = self.mode if self.backend == "inductor" and self.mode != "default" else None
        return {"backend": self.backend, "mode": mode, "fullgraph": True}

    def describe(self) -> str:
        """Return a one-line summary for logs and bench output."""
        blocks = " (transformer blocks)" if self.scope == "blocks" else ""
        parts = [f"compile {self.mode}{blocks}" if self.compile else "eager"]
        parts += ["channels-last"] if self.channels_last else []
        parts += ["fused self-attention qkv"] if self.fuse_qkv else []
        return ", ".join(parts)


@dataclass
class CompileStats:
    """Wall time of the calls that compiled a graph (first calls, new shapes), summed over the compiled modules."""

    seconds: float = 0.0
    graphs: int = 0
    reported: int = 0  # graphs already logged by the stage
    after_controlnet: bool = False  # a ControlNet call opened this denoising step (CUDA-graph step marking)

    def unreported(self) -> str | None:
        """Return a log line for graphs compiled since the last one logged, else None; marks them logged."""
        if self.graphs == self.reported:
            return None
        self.reported = self.graphs
        return f"compiled {self.graphs} graph(s) in {self.seconds:.1f} s (paid once per process)"

    def timed(self, fn, *args, **kwargs):
        """Call fn; if a graph compiled during the call, add its wall time and the new graphs."""
        before = _graphs_compiled()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if _graphs_compiled() != before:
            self.seconds += time.perf_counter() - start
            self.graphs += _graphs_compiled() - before
        return out


@dataclass
class Speedups:
    """What apply_speedups did to a pipeline's models, and the compile time spent so far."""

    plan: SpeedupPlan
    stats: CompileStats = field(default_factory=CompileStats)
    compiled: list[str] = field(default_factory=list)


def resolve_speedups(cfg: DiffusionConfig, device: torch.device) -> SpeedupPlan:
    """Decide a diffusion section's "auto" speed settings for a device: each is on with CUDA, off on CPU."""
    cuda = device.type == "cuda"

    def pick(value: bool | str) -> bool:
        return cuda if value == "auto" else bool(value)

    return SpeedupPlan(
        pick(cfg.compile), cfg.compile_mode, pick(cfg.channels_last), pick(cfg.fuse_qkv), scope=cfg.compile_scope
    )


def _graphs_compiled() -> int:
    """Dynamo's count of graphs compiled in this process (the counter has kept its name since torch 2.0)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class CompiledForward:
    """A module's forward compiled by torch.compile and called from the module's own (eager) __call__.

    Compiling `forward` rather than the module call keeps the module's hooks eager: the cross-attention capture
    counts steps and collects maps there, so the compiled graph never depends on the step number. Calls that
    compile a graph are timed into `stats`.
    """

    def __init__(self, module: torch.nn.Module, plan: SpeedupPlan, stats: CompileStats, role: str = "unet"):
        self.eager = module.forward
        self.stats, self.role = stats, role
        self.cudagraphs = plan.backend == "inductor" and plan.mode in CUDA_GRAPH_MODES
        self.compiled = torch.compile(self.eager, **plan.compile_kwargs())

    def __call__(self, *args, **kwargs):
        """Run the compiled forward; time the call if it compiled a new graph."""
        if self.cudagraphs:
            self._mark_step()
        return self.stats.timed(self.compiled, *args, **kwargs)

    def _mark_step(self) -> None:
        """Start a new CUDA-graph step before each denoising step's first compiled call (the ControlNet's when there
        is one): outputs of the previous step may then be overwritten, those of this step's ControlNet may not."""
        if self.role == "controlnet":
            torch.compiler.cudagraph_mark_step_begin()
            self.stats.after_controlnet = True
        elif self.stats.after_controlnet:
            self.stats.after_controlnet = False
        else:
            torch.compiler.cudagraph_mark_step_begin()


class TimedForward:
    """A module's eager forward whose transformer blocks are compiled (compile_scope "blocks"): calls that compile
    a block graph are timed into `stats`, like CompiledForward's."""

    def __init__(self, module: torch.nn.Module, stats: CompileStats):
        self.eager, self.stats = module.forward, stats

    def __call__(self, *args, **kwargs):
        """Run the forward; time the call if a block graph compiled during it."""
        return self.stats.timed(self.eager, *args, **kwargs)


def compile_blocks(model: torch.nn.Module, plan: SpeedupPlan, block_types: Sequence[str]) -> int:
    """Compile every submodule whose class is named in block_types in place (nn.Module.compile, fullgraph); return
    how many. Blocks of one shape share one graph, so the compile time is that of a few blocks, not of the model."""
    done = 0
    for module in model.modules():
        if type(module).__name__ in block_types:
            module.compile(**plan.compile_kwargs())
            done += 1
    if not done:
        raise SpeedupError(f"compile_scope blocks: {type(model).__name__} has no {', '.join(block_types)} to compile")
    return done


def fuse_self_attention(model: torch.nn.Module) -> int:
    """Fuse q, k and v of every self-attention layer into one projection (diffusers' FusedAttnProcessor2_0).

    Cross-attention layers keep their separate to_q / to_k (the capture hooks them, models/xattn.py); diffusers'
    own `fuse_qkv_projections()` would fuse their k and v too. Returns the number of layers fused.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for name, module in model.named_modules():
        if not isinstance(module, Attention) or module.is_cross_attention:
            continue
        if getattr(module, "fused_projections", False):
            continue
        if type(module.processor) is not AttnProcessor2_0:
            raise SpeedupError(
                f"fuse_qkv: {type(model).__name__}.{name} runs {type(module.processor).__name__}, expected "
                "AttnProcessor2_0 (set fuse_qkv false to keep custom processors)"
            )
        module.fuse_projections(fuse=True)
        module.set_processor(FusedAttnProcessor2_0())
        fused += 1
    return fused


def configure_compiler(plan: SpeedupPlan) -> None:
    """Set the process-wide dynamo / inductor options the compiled UNet needs (idempotent)."""
    import torch._dynamo
    import torch._inductor.config as inductor

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # < 2.6
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), RECOMPILE_LIMIT))
    # 1x1 convolutions as matmuls: the UNet's projections and shortcuts hit the GEMM templates (diffusers' advice)
    inductor.conv_1x1_as_mm = True
    if plan.mode.startswith("max-autotune"):
        inductor.coordinate_descent_tuning = True
        inductor.coordinate_descent_check_all_directions = True
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # only fp32 runs see it; bf16/fp16 matmuls are unaffected
        torch.backends.cudnn.allow_tf32 = True


def _models(pipe) -> dict[str, torch.nn.Module]:
    """Return the pipeline's denoising models: the UNet and, for ControlNet pipelines, the ControlNet."""
    models = {"unet": pipe.unet}
    if getattr(pipe, "controlnet", None) is not None:
        models["controlnet"] = pipe.controlnet
    return models


def apply_speedups(pipe, plan: SpeedupPlan, speedups: Speedups | None = None) -> Speedups:
    """Apply a plan to a pipeline in place: channels-last (UNet, ControlNet, VAE), fused self-attention projections,
    and torch.compile of the UNet and ControlNet forwards. Models shared with a pipeline already done (a ControlNet
    pipeline made from the SD one) are left as they are. Returns the record, with compile time filled in by calls.
    """
    speedups = speedups or Speedups(plan)
    if speedups.plan != plan:
        raise SpeedupError(f"apply_speedups: plan {plan} differs from the record's {speedups.plan}")
    for name, model in _models(pipe).items():
        if getattr(model, "_maskforge_speedups", None) is not None:
            continue
        if plan.channels_last:
            model.to(memory_format=torch.channels_last)
        if plan.fuse_qkv:
            fuse_self_attention(model)
        if plan.compile and plan.scope == "blocks":
            configure_compiler(plan)
            # the ControlNet repeats the UNet's blocks but does not declare them: take the UNet's list
            compile_blocks(model, plan, getattr(pipe.unet, "_repeated_blocks", None) or REPEATED_BLOCKS)
            model.forward = TimedForward(model, speedups.stats)
            speedups.compiled.append(name)
        elif plan.compile:
            configure_compiler(plan)
            model.forward = CompiledForward(model, plan, speedups.stats, name)
            speedups.compiled.append(name)
        model._maskforge_speedups = plan
    if plan.channels_last and getattr(pipe.vae, "_maskforge_speedups", None) is None:
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.vae._maskforge_speedups = plan
    return speedups


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether apply_speedups compiled this model's forward (whole, or its transformer blocks)."""
    return isinstance(model.__dict__.get("forward"), CompiledForward | TimedForward)
