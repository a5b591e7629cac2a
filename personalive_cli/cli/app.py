"""``personalive``: animate a portrait with a driving video, offline or live."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from personalive_cli import __version__, registry
from personalive_cli.cli.console import advance_with_fps, err, frame_progress, handle_errors, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Real-time, streamable, diffusion-based portrait animation.")

Weights = Annotated[str | None, typer.Option("--weights", "-w", help="weights folder (else $PERSONALIVE_WEIGHTS, then the hub cache)")]
Device = Annotated[str, typer.Option(help="auto|cpu|cuda|mps")]
Size = Annotated[int, typer.Option(help="working resolution (square)")]
Vae = Annotated[str, typer.Option(help="full: sd-vae-ft-mse decoder; tiny: TAESD (faster, slightly softer)")]
Attention = Annotated[str, typer.Option(help="sdpa (PyTorch, default) or xformers (CUDA, if installed)")]


Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the step's networks (slower start; "
                                                        "benchmarks/README.md says what it gives where)")]
CudaGraphs = Annotated[bool, typer.Option("--cuda-graphs", help="replay the stream step from a CUDA graph (CUDA)")]


def _model_options(method: str, vae: str, attention: str, extra: list[str] | None = None,
                   compile: bool = False, cuda_graphs: bool = False) -> dict:  # noqa: A002
    """Keyword options for the method's constructor: the model flags it declares (``--vae``,
    ``--attention``, ``--compile``, ``--cuda-graphs``; any other value than the default is refused for a
    method without them) and every ``--option KEY=VALUE``, checked against the method's options dataclass."""
    from personalive_cli.errors import UserError

    cls = registry.get(method)
    flags = {"vae": (vae, "full"), "attention": (attention, "sdpa"), "compile": (compile, False),
             "cuda_graphs": (cuda_graphs, False)}
    options = {}
    for flag, (value, default) in flags.items():
        if flag in cls.model_flags:
            options[flag] = value
        elif value != default:
            raise UserError(f"method {method!r} has no --{flag.replace('_', '-')} option")
    options.update(cls.parse_options(extra or []))
    return options


Option = Annotated[list[str] | None, typer.Option("--option", help="method option KEY=VALUE (repeatable), "
                                                  "e.g. --option pasteback=false for liveportrait")]


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="print the version")] = False) -> None:
    setup_logging()
    if version:
        print(__version__)
        raise typer.Exit()


methods_app = typer.Typer(help="List the registered methods; `methods configure` sets up a baseline that runs "
                                "its upstream code.")


@methods_app.callback(invoke_without_command=True)
@handle_errors
def methods_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")] = False,
    weights: Weights = None,
) -> None:
    """List the registered methods, whether each can run here, and what it needs."""
    if ctx.invoked_subcommand is not None:
        return
    rows = []
    for name, cls in registry.available().items():
        status = cls.status(weights)
        rows.append({"name": name, "ready": status.ready, "status": status.detail, "needs": status.needs,
                     "frames_per_step": cls.frames_per_step, "streamable": cls.streamable,
                     "description": cls.description,
                     "options": [{"name": n, "type": t, "default": d, "help": h} for n, t, d, h in cls.options_help()]})
    for name, reason in registry.failed().items():
        rows.append({"name": name, "ready": False, "status": f"failed to load: {reason}", "needs": [],
                     "frames_per_step": None, "streamable": None, "description": "", "options": []})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="personalive methods")
    for col in ("method", "ready", "frames/step", "status", "needs", "what it is"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "[green]yes" if r["ready"] else "[red]no", str(r["frames_per_step"] or "-"),
                      escape(r["status"]), escape("\n".join(r["needs"]) or "-"), r["description"])
    err.print(table)
    err.print("`personalive methods info NAME` lists a method's --option settings")


@methods_app.command("info")
@handle_errors
def methods_info_cmd(name: Annotated[str, typer.Argument(help="method name")]) -> None:
    """What one method is: capabilities, model flags and every --option with its default and help."""
    cls = registry.get(name)
    kinds = [k for k, on in (("streams", cls.streamable), ("clip-based", cls.clip_based),
                             ("has weights", cls.has_weights)) if on]
    err.print(f"[bold]{name}[/]: {escape(cls.description)}", highlight=False, soft_wrap=True)
    err.print(f"{cls.frames_per_step} frame(s) per step; {', '.join(kinds) or 'no weights'}; model flags: "
              f"{', '.join('--' + f.replace('_', '-') for f in sorted(cls.model_flags)) or 'none'}", highlight=False, soft_wrap=True)
    table = Table(title=f"--option KEY=VALUE for {name}")
    for col in ("option", "type", "default", "what it does"):
        table.add_column(col, overflow="fold")
    for opt, kind, default, text in cls.options_help():
        table.add_row(opt, str(kind), repr(default), escape(text))
    err.print(table)


@methods_app.command("configure")
@handle_errors
def methods_configure_cmd(
    name: Annotated[str, typer.Argument(help="a method that runs upstream code (see `personalive methods`)")],
    repo: Annotated[Path, typer.Option(help="checkout of the method's upstream repository")],
    python: Annotated[str, typer.Option(help="python of the environment set up for it (its pinned stack)")],
    weights: Annotated[Path | None, typer.Option(help="its weights (file or folder), where it needs them")] = None,
) -> None:
    """Record where a baseline's upstream checkout, interpreter and weights are (user config file)."""
    from personalive_cli.errors import UserError

    cls = registry.get(name)
    if not cls.configurable:
        which = ", ".join(n for n, c in registry.available().items() if c.configurable) or "none"
        raise UserError(f"{name!r} is not a method that runs upstream code; those are: {which}")
    path = cls.configure(repo, python, weights)
    err.print(f"{name}: {registry.get(name).status().detail} (saved in {path})", highlight=False, soft_wrap=True)


app.add_typer(methods_app, name="methods")


ReferenceFrame = Annotated[int, typer.Option(help="when the reference is a video: the frame to use")]
Frames = Annotated[int | None, typer.Option(help="animate only the first N driving frames")]
Dtype = Annotated[str, typer.Option(help="auto|fp32|fp16|bf16 (auto: fp16 on CUDA, fp32 on CPU)")]
Seed = Annotated[int, typer.Option(help="random seed")]
Crop = Annotated[str, typer.Option(help="auto: face-centred square crops; none: resize whole frames")]
Crf = Annotated[int, typer.Option(help="H.264 quality (lower is better)")]
VideoOut = Annotated[Path, typer.Option("--output", "-o", help="output video: .mp4, .mov, .mkv or .webm")]


def _run_animate(reference: Path, driving: Path, output: Path, opts) -> None:
    """Run :func:`animate` with a progress bar and a summary line (shared by `animate` and `demo`)."""
    from personalive_cli.pipeline.animate import animate

    progress = frame_progress()
    state = {}

    def on_start(total, out_fps):
        progress.start()  # only once inputs are validated, so an early error prints one line
        state["task"] = progress.add_task(f"animate ({opts.method})", total=total, fps="-- fps")

    def on_frame():
        advance_with_fps(progress, state["task"])

    started = time.perf_counter()
    try:
        result = animate(reference, driving, output, opts, on_start=on_start, on_frame=on_frame)
    finally:
        progress.stop()
    seconds = time.perf_counter() - started
    err.print(f"wrote {result.path} ({result.frames} frames at {float(result.fps):.3f} fps"
              f"{', with audio' if result.audio else ''}) in {seconds:.1f} s ({result.frames / seconds:.2f} frames/s)",
              highlight=False, soft_wrap=True)


@app.command("animate")
@handle_errors
def animate_cmd(
    reference: Annotated[Path, typer.Argument(help="reference portrait (any image PIL reads, or a video: see "
                                                   "--reference-frame)")],
    driving: Annotated[Path, typer.Argument(help="driving video (any video FFmpeg reads)")],
    output: VideoOut = Path("out.mp4"),
    method: Annotated[str, typer.Option(help="method name (see `personalive methods`)")] = "personalive",
    frames: Frames = None,
    size: Size = 512,
    fps: Annotated[float | None, typer.Option(help="output fps (default: the driving video's)")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 42,
    crop: Crop = "auto",
    crf: Crf = 18,
    reference_frame: ReferenceFrame = 0,
    vae: Vae = "full",
    attention: Attention = "sdpa",
    compile_models: Compile = False,
    cuda_graphs: CudaGraphs = False,
    option: Option = None,
    weights: Weights = None,
) -> None:
    """Animate REFERENCE with DRIVING into a video (with the driving audio, in sync)."""
    from personalive_cli.pipeline.animate import AnimateOptions

    opts = AnimateOptions(method=method, frames=frames, size=size, fps=fps, device=device, dtype=dtype,
                          seed=seed, crop=crop, weights=weights, crf=crf, reference_frame=reference_frame,
                          method_options=_model_options(method, vae, attention, option, compile_models, cuda_graphs))
    _run_animate(reference, driving, output, opts)


@app.command("demo")
@handle_errors
def demo_cmd(
    output: VideoOut = Path("demo.mp4"),
    method: Annotated[str, typer.Option(help="method name; `--method still` needs no weights")] = "personalive",
    frames: Frames = None,
    size: Size = 512,
    fps: Annotated[float | None, typer.Option(help="output fps (default: the demo's 25)")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 42,
    crop: Crop = "auto",
    crf: Crf = 18,
    vae: Vae = "full",
    attention: Attention = "sdpa",
    compile_models: Compile = False,
    cuda_graphs: CudaGraphs = False,
    option: Option = None,
    weights: Weights = None,
) -> None:
    """Animate the bundled demo (the official release's portrait and 4 s of its driving video).

    A method whose weights are not found (no --weights, no environment variable, nothing in the hub
    cache) and that can fetch them downloads them into the hub cache first, once."""
    from personalive_cli.demo import demo_files
    from personalive_cli.pipeline.animate import AnimateOptions

    reference, driving = demo_files()
    method_options = _model_options(method, vae, attention, option, compile_models, cuda_graphs)
    _fetch_demo_weights(method, weights)
    opts = AnimateOptions(method=method, frames=frames, size=size, fps=fps, device=device, dtype=dtype,
                          seed=seed, crop=crop, weights=weights, crf=crf, method_options=method_options)
    _run_animate(reference, driving, output, opts)


def _fetch_demo_weights(method: str, weights: str | None) -> None:
    """Download a method's weights into the hub cache when nothing points at any (as diffusers'
    ``from_pretrained`` does on first use); offline, one line saying what to do instead."""
    from personalive_cli.errors import UserError

    cls = registry.get(method)
    if weights is not None or cls.status(None).ready or not cls.downloads_to_cache:
        return  # given explicitly (its errors are the user's to see), already there, or not fetchable
    if cls.weights_env and os.environ.get(cls.weights_env):
        return
    err.print(f"{method} weights not found: downloading them into the Hugging Face cache (once; "
              f"`personalive weights download` does the same)", highlight=False, soft_wrap=True)
    try:
        cls.download_weights(None)
    except UserError as exc:
        raise UserError(f"{method} weights are not here and could not be downloaded ({exc}); when online run "
                        "`personalive weights download`, or try `personalive demo --method still` (no weights) "
                        "or `--method liveportrait`") from None


@app.command("stream")
@handle_errors
def stream_cmd(
    reference: Annotated[Path, typer.Option("--reference", "-r", help="reference portrait")],
    source: Annotated[str, typer.Option("--source", "-s", help="video file, /dev/videoN webcam, or - for stdin")],
    method: Annotated[str, typer.Option(help="method name")] = "personalive",
    fmt: Annotated[str, typer.Option("--format", help="stdout format: y4m or rgb24")] = "y4m",
    to: Annotated[str | None, typer.Option("--to", help="send to ffmpeg instead: a file, rtmp:// URL or /dev/videoN")] = None,
    size: Size = 512,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="auto|fp32|fp16|bf16")] = "auto",
    seed: Seed = 42,
    crop: Annotated[str, typer.Option(help="auto|none")] = "auto",
    realtime: Annotated[bool | None, typer.Option("--realtime/--no-realtime",
                        help="pace the source in real time and drop frames when behind (default: webcams only)")] = None,
    input_format: Annotated[str, typer.Option(help="stdin format: auto (y4m by magic, else rgb24), y4m, rgb24")] = "auto",
    input_size: Annotated[str | None, typer.Option(help="WxH of raw rgb24 stdin frames")] = None,
    input_fps: Annotated[float, typer.Option(help="fps of raw rgb24 stdin frames")] = 25.0,
    reference_frame: ReferenceFrame = 0,
    vae: Vae = "full",
    attention: Attention = "sdpa",
    compile_models: Compile = False,
    cuda_graphs: CudaGraphs = False,
    option: Option = None,
    weights: Weights = None,
) -> None:
    """Animate REFERENCE live from SOURCE, frame by frame, to stdout (y4m/rgb24) or ffmpeg (--to)."""
    from personalive_cli.pipeline.live import LiveOptions, run_stream

    opts = LiveOptions(method=method, fmt=fmt, to=to, size=size, device=device, dtype=dtype, seed=seed, crop=crop,
                       realtime=realtime, input_format=input_format, input_size=input_size, input_fps=input_fps,
                       weights=weights, reference_frame=reference_frame, method_options=_model_options(method, vae, attention, option,
                                                                                     compile_models, cuda_graphs))
    stats = run_stream(reference, source, opts)
    if stats.closed:
        return
    dropped = f", {stats.dropped} dropped to keep up in real time" if stats.dropped else ""
    ended = ", interrupted" if stats.interrupted else ""  # Ctrl-C / SIGTERM end the stream: exit 0, output kept
    err.print(f"stream: {stats.received} frames in, {stats.written} out{dropped}{ended}")


from personalive_cli.cli.weights_cmd import mount as _mount_weights  # noqa: E402

_mount_weights(app)

from personalive_cli.cli.bench_cmd import mount as _mount_bench  # noqa: E402
from personalive_cli.cli.data_cmd import mount as _mount_data  # noqa: E402
from personalive_cli.cli.serve_cmd import mount as _mount_serve  # noqa: E402
from personalive_cli.cli.train_cmd import mount as _mount_train  # noqa: E402

_mount_bench(app)
_mount_data(app)
_mount_train(app)
_mount_serve(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
