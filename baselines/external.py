"""Baselines that run their own upstream code, in the environment the user set up for it, as a subprocess.

Their code pins conflicting stacks (Python, CUDA, diffusers versions), so they are never imported here.
``personalive methods configure NAME --repo PATH --python PATH [--weights PATH]`` records where a method's
checkout and interpreter are (a JSON file in the user config folder: ``$PERSONALIVE_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/personalive``, else ``~/.config/personalive``). A session collects the whole driving
clip (these are offline, clip-based diffusion models), converts the inputs into what the upstream entry
point needs, runs it, and reads its output video back as frames, so ``animate`` and the bench treat it
like any other method. An unconfigured method reports so (``personalive methods``) and is not run.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from personalive_cli.errors import UserError
from personalive_cli.registry import Method, MethodStatus, Session, as_frames, option

CONFIG_ENV = "PERSONALIVE_CONFIG_DIR"
CONFIG_FILE = "methods.json"
COUNT_SLACK = 2  # frames an upstream may drop or add at a clip's ends before the result is refused


@dataclass
class ExternalConfig:
    repo: str
    python: str
    weights: str | None = None


def config_dir() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "personalive"


def config_path() -> Path:
    return config_dir() / CONFIG_FILE


def load_configs() -> dict[str, ExternalConfig]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {name: ExternalConfig(**entry) for name, entry in data.get("methods", {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read the methods configuration {path} ({exc}); fix or delete it") from None


def save_config(name: str, config: ExternalConfig | None) -> Path:
    """Store (or with None remove) one method's configuration; written atomically."""
    configs = load_configs()
    if config is None:
        configs.pop(name, None)
    else:
        configs[name] = config
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"methods": {k: asdict(v) for k, v in sorted(configs.items())}}, indent=2))
    os.replace(tmp, path)
    return path


def external_methods() -> dict[str, type[ExternalMethod]]:
    from personalive_cli import registry

    return {n: c for n, c in registry.available().items() if isinstance(c, type) and issubclass(c, ExternalMethod)}


def configure(name: str, repo: str | Path, python: str | Path, weights: str | Path | None = None) -> Path:
    """Validate and store where NAME's upstream checkout, interpreter and (optionally) weights are."""
    methods = external_methods()
    if name not in methods:
        raise UserError(f"{name!r} is not a method that runs upstream code; those are: {', '.join(methods)}")
    cls = methods[name]
    repo = Path(repo).expanduser().resolve()
    if not repo.is_dir():
        raise UserError(f"--repo {repo} is not a folder (clone {cls.upstream_url} there)")
    entry = repo / cls.entry_point
    if not entry.is_file():
        raise UserError(f"--repo {repo} has no {cls.entry_point}: is it a checkout of {cls.upstream_url}?")
    python_path = Path(python).expanduser()
    found = shutil.which(str(python_path)) if not python_path.is_file() else str(python_path.absolute())
    if not found or not os.access(found, os.X_OK):
        raise UserError(f"--python {python} is not an executable interpreter (give the python of the environment "
                        f"you created for {name})")
    weights_path = None
    if weights is not None:
        weights_path = Path(weights).expanduser().resolve()
        if not weights_path.exists():
            raise UserError(f"--weights {weights_path} does not exist")
    elif cls.weights_required:
        raise UserError(f"{name} needs --weights: {cls.weights_help}")
    return save_config(name, ExternalConfig(repo=str(repo), python=found,
                                            weights=str(weights_path) if weights_path else None))


@dataclass
class Clip:
    """What a session hands to an adapter: the reference, the driving frames, their rate and audio."""

    reference: np.ndarray
    frames: list[np.ndarray]
    fps: Fraction
    audio: Path | None = None       # a file whose (first) audio track belongs to the driving clip
    audio_start: float = 0.0        # where the clip starts in that file, seconds


@dataclass
class Invocation:
    """One upstream run: the command, its working folder, extra environment, and where the video appears."""

    command: list[str]
    cwd: Path
    output: Path                    # a file, or a folder searched for one new .mp4
    env: dict[str, str] | None = None
    drop_leading: int = 0           # frames to discard at the start of the upstream output
    repeat_leading: int = 0         # copies of the first kept frame to put before it (for an upstream whose
                                    # output starts later than the driving clip), so output i is input i
    select: Callable[[np.ndarray], np.ndarray] | None = None  # the result's part of a panel frame


def write_video(path: Path, frames: list[np.ndarray], fps: Fraction, audio: Path | None = None,
                audio_start: float = 0.0, silent_audio_rate: int | None = None) -> Path:
    """H.264 mp4 of ``frames``; with ``audio`` its track is cut to the clip and muxed, with
    ``silent_audio_rate`` a silent track of the clip's length is added instead."""
    from personalive_cli.io.ffmpeg import find_ffmpeg

    h, w = frames[0].shape[:2]
    cmd = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    duration = len(frames) / float(fps)
    if audio is not None:
        cmd += ["-ss", f"{audio_start:.6f}", "-t", f"{duration:.6f}", "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
                "-c:a", "aac"]
    elif silent_audio_rate:
        cmd += ["-f", "lavfi", "-t", f"{duration:.6f}", "-i", f"anullsrc=r={silent_audio_rate}:cl=mono",
                "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12"]
    if (w % 2) or (h % 2):
        cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
    cmd += ["-shortest" if (audio is not None or silent_audio_rate) else "-an", str(path)]
    data = b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames)
    proc = subprocess.run(cmd, input=data, capture_output=True)
    if proc.returncode != 0:
        raise UserError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return path


def has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.error.FFmpegError, OSError):
        return False


def read_frames(path: Path) -> list[np.ndarray]:
    from personalive_cli.io.video import VideoReader

    return list(VideoReader(path))


def match_count(frames: list[np.ndarray], n: int, name: str) -> list[np.ndarray]:
    """Exactly n frames: a difference of up to COUNT_SLACK at the end is padded (last frame) or trimmed."""
    if not frames:
        raise UserError(f"{name} produced no frames")
    if abs(len(frames) - n) > COUNT_SLACK:
        raise UserError(f"{name} produced {len(frames)} frames for {n} driving frames")
    return (frames + [frames[-1]] * n)[:n]


class ExternalSession(Session):
    """Collects the whole clip; :meth:`flush` runs the upstream once and yields its frames."""

    def __init__(self, method: ExternalMethod, reference: np.ndarray) -> None:
        super().__init__(frames_per_step=method.frames_per_step, size=method.size)
        self.method = method
        self.reference = reference
        self.frames: list[np.ndarray] = []

    def push(self, frames) -> list[np.ndarray]:
        self.frames.extend(as_frames(frames, self.size))
        return []

    def step(self, frames: np.ndarray) -> Iterator[np.ndarray]:
        """A step's worth of frames is collected like any other: the clip runs once, at :meth:`flush`."""
        return iter(self.push(frames))

    def flush(self) -> list[np.ndarray]:
        if not self.frames:
            return []
        clip = Clip(self.reference, self.frames, self.method.fps, self.method.audio, self.method.audio_start)
        self.frames = []
        return list(self.method.run_clip(clip))


@dataclass
class ExternalOptions:
    timeout: float | None = option(None, "seconds the upstream run may take before it is stopped")
    keep_workdir: bool = option(False, "keep the upstream run's work folder (inputs, outputs, log) for debugging")


class ExternalMethod(Method):
    """Base of the subprocess adapters. Subclasses set the class attributes and :meth:`invocation`."""

    frames_per_step = 16      # clip-based; the session runs the whole clip at the end
    Options = ExternalOptions
    streamable = False
    clip_based = True
    configurable = True
    takes_driving_context = True  # `animate` passes the clip's fps and the driving audio
    upstream_url = ""
    entry_point = ""          # a file that must exist in the checkout
    weights_required = False
    weights_help = ""
    setup_steps: tuple[str, ...] = ()

    def __init__(self, weights=None, device="cpu", dtype=None, size=512, seed=42, fps: float = 25.0,
                 audio: str | Path | None = None, audio_start: float = 0.0, timeout: float | None = None,
                 keep_workdir: bool = False, **options):
        super().__init__(weights=weights, device=device, dtype=dtype, size=size, seed=seed, **options)
        config = load_configs().get(self.name)
        if config is None:
            raise UserError(f"method {self.name!r} is not configured: {' ; '.join(self.setup_steps)}")
        self.config = config
        self.fps = Fraction(fps).limit_denominator(1001)
        self.audio = Path(audio) if audio else None
        self.audio_start = float(audio_start)
        self.timeout = timeout
        self.keep_workdir = keep_workdir
        self.upstream_options = options

    @classmethod
    def configure(cls, repo, python, weights=None) -> Path:
        return configure(cls.name, repo, python, weights)

    @classmethod
    def status(cls, weights=None) -> MethodStatus:
        config = load_configs().get(cls.name)
        configure_cmd = (f"personalive methods configure {cls.name} --repo REPO --python ENV/bin/python"
                         + (" --weights PATH" if cls.weights_required else " [--weights PATH]"))
        if config is None:
            return MethodStatus(ready=False, detail=f"not configured (runs {cls.upstream_url} in its own environment)",
                                needs=[*cls.setup_steps, configure_cmd])
        problems = []
        if not (Path(config.repo) / cls.entry_point).is_file():
            problems.append(f"{config.repo} has no {cls.entry_point}")
        if not os.access(config.python, os.X_OK):
            problems.append(f"{config.python} is not executable")
        if config.weights and not Path(config.weights).exists():
            problems.append(f"{config.weights} does not exist")
        if problems:
            return MethodStatus(ready=False, detail="configured but broken: " + "; ".join(problems),
                                needs=[configure_cmd])
        return MethodStatus(ready=True, detail=f"configured: {config.repo} with {config.python}"
                            + (f", weights {config.weights}" if config.weights else ""))

    @classmethod
    def check_size(cls, size: int) -> None:
        if not (64 <= size <= 2048):
            raise UserError(f"unsupported --size {size} for method {cls.name!r}")

    def start(self, reference: np.ndarray) -> Session:
        return ExternalSession(self, reference)

    def device_env(self) -> dict[str, str]:
        dev = str(self.device)
        if dev.startswith("cuda:"):
            return {"CUDA_VISIBLE_DEVICES": dev.split(":", 1)[1]}
        return {}

    @abc.abstractmethod
    def invocation(self, clip: Clip, work: Path) -> Invocation:
        """Write the inputs the upstream needs into ``work`` and say how to run it."""

    def run_clip(self, clip: Clip) -> list[np.ndarray]:
        from personalive_cli.faces.crop import resize

        work = Path(tempfile.mkdtemp(prefix=f"personalive-{self.name}-"))
        try:
            inv = self.invocation(clip, work)
            log = work / "upstream.log"
            env = {**os.environ, **self.device_env(), **(inv.env or {})}
            started = time.time()
            code = self._run_upstream(inv, env, log)
            if code != 0:
                raise UserError(f"{self.name} upstream exited with status {code}: {_log_tail(log)}")
            video = self._find_output(inv.output, started, log)
            frames = read_frames(video)[inv.drop_leading:]
            if inv.select is not None:
                frames = [inv.select(f) for f in frames]
            if frames and inv.repeat_leading:
                frames = [frames[0]] * inv.repeat_leading + frames
            return match_count([resize(f, self.size) for f in frames], len(clip.frames), self.name)
        finally:
            if not self.keep_workdir:
                shutil.rmtree(work, ignore_errors=True)

    def _run_upstream(self, inv: Invocation, env: dict[str, str], log: Path) -> int:
        """Run the upstream command in its own session (its own process group), output into ``log``.
        Unless it exits by itself, its whole group is stopped: on timeout, on an error here, and on
        Ctrl-C or SIGTERM (which, during the run, raise KeyboardInterrupt here instead of ending Python
        at once, so no upstream process outlives us)."""
        with open(log, "wb") as out, _sigterm_interrupts():
            try:
                proc = subprocess.Popen(inv.command, cwd=inv.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise UserError(f"cannot run {self.name}'s upstream code ({exc})") from None
            finished = False
            try:
                code = proc.wait(timeout=self.timeout)
                finished = True
                return code
            except subprocess.TimeoutExpired:
                raise UserError(f"{self.name} did not finish within {self.timeout} s: {_log_tail(log)}") from None
            finally:
                if not finished:
                    kill_group(proc)

    def _find_output(self, output: Path, started: float, log: Path) -> Path:
        if output.is_file():
            return output
        if output.is_dir():
            found = sorted((p for p in output.rglob("*.mp4") if p.stat().st_mtime >= started - 1),
                           key=lambda p: p.stat().st_mtime)
            if found:
                return found[-1]
        raise UserError(f"{self.name} finished but wrote no video in {output}: {_log_tail(log)}")


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group: SIGTERM,
    ``grace`` seconds, then SIGKILL; the leader is reaped."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGTERM:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the upstream runs, SIGTERM raises KeyboardInterrupt (as Ctrl-C does) in the main thread,
    so the clean-up runs; a handler someone else installed is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _log_tail(log: Path, lines: int = 3) -> str:
    """The last lines of the upstream's output, for an error message (its work folder is removed)."""
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        tail = []
    return " | ".join(line.strip() for line in tail) or "(no output)"

