"""``personalive serve``: the live page (webcam in, animated portrait out) for any streamable method."""

from __future__ import annotations

from typing import Annotated

import typer

from personalive_cli.cli.console import err, handle_errors


def serve_cmd(
    host: Annotated[str, typer.Option(help="address to listen on; anything but loopback needs --token or --no-auth")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 7860,
    method: Annotated[str, typer.Option(help="a streamable method (`--method still` needs no weights)")] = "personalive",
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="weights folder (else $PERSONALIVE_WEIGHTS, then the hub cache)")] = None,
    size: Annotated[int, typer.Option(help="working resolution (square)")] = 512,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda|mps")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto|fp32|fp16|bf16")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed (the page's Reset button picks another)")] = 42,
    crop: Annotated[str, typer.Option(help="auto: follow the face in the camera; none: use the whole frame")] = "auto",
    max_sessions: Annotated[int, typer.Option(help="live viewers at once; more get a 'busy' page")] = 1,
    token: Annotated[str | None, typer.Option(help="secret every request must carry (the page takes it from ?token=)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="allow a non-loopback --host without a token")] = False,
    max_upload_mb: Annotated[float, typer.Option(help="largest portrait upload, in MB")] = 15.0,
    vae: Annotated[str, typer.Option(help="full or tiny (TAESD), for methods with a VAE")] = "full",
    attention: Annotated[str, typer.Option(help="sdpa or xformers, for methods with attention")] = "sdpa",
    compile_models: Annotated[bool, typer.Option("--compile", help="torch.compile the step's networks")] = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="replay the stream step from a CUDA graph")] = False,
    option: Annotated[list[str] | None, typer.Option("--option", help="method option KEY=VALUE (repeatable)")] = None,
) -> None:
    """Serve a page that animates a portrait live from the viewer's webcam (WebRTC, or WebSocket)."""
    from personalive_cli import registry
    from personalive_cli.cli.app import _model_options
    from personalive_cli.errors import UserError
    from personalive_cli.serve.server import Listen, bind, check_listen, is_loopback

    listen = Listen(host, port, token, no_auth)
    check_listen(listen)
    if max_sessions < 1:
        raise UserError(f"--max-sessions must be at least 1, got {max_sessions}")
    if not max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if crop not in ("auto", "none"):
        raise UserError(f"unknown --crop {crop!r}; choose auto or none")
    try:
        import aiortc  # noqa: F401
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(f"serve needs the serve extra ({exc.name} is missing): pip install 'personalive[serve]'") from None
    if not registry.get(method).streamable:
        raise UserError(f"method {method!r} works on whole clips and cannot animate live; pick a streamable one "
                        "(see `personalive methods`)")
    options = _model_options(method, vae, attention, option, compile_models, cuda_graphs)
    if crop == "auto":
        from personalive_cli.faces.detector import FaceDetector

        FaceDetector().close()  # mediapipe missing is said now, not when the first viewer starts
    sock = bind(listen)
    try:
        from personalive_cli.pipeline.animate import build_method
        from personalive_cli.serve.app import ServeSettings, create_app
        from personalive_cli.serve.uploads import UploadLimits

        built = build_method(method, size, device, dtype, seed, weights, **options)
        settings = ServeSettings(max_sessions=max_sessions, crop=crop, seed=seed, token=token,
                                 limits=UploadLimits(max_bytes=int(max_upload_mb * 1e6)))
        app = create_app(built, settings)
        if not is_loopback(host):
            err.print(f"[yellow]warning:[/] listening on {host}: other machines can reach this server"
                      f"{' and anyone may use it (--no-auth)' if no_auth else ''}", highlight=False, soft_wrap=True)
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        address = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
        err.print(f"serving {method} at {address} (Ctrl-C stops)", highlight=False, soft_wrap=True)
        from personalive_cli.serve.server import run_server

        run_server(app, sock)
    finally:
        sock.close()
    err.print("serve: stopped")


def mount(app: typer.Typer) -> None:
    app.command("serve")(handle_errors(serve_cmd))
