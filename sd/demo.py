"""python -m sd.demo --model PATH_OR_ID [...]  |  python -m sd.demo --mini runs/mini

A local page in the browser, as InstaFlow's local demo: prompt, negative prompt, seed (with
"randomize"), steps, guidance, size; the image with the time of each part; a strip of recent results.
With --mini, the mini InstaFlow's teacher, 2-RF and one-step student side by side, regenerated as the
prompt is typed (after `python -m sd.mini --fast` or a full run). The page's only way in is a JSON API:

    curl -s localhost:7860/api/info
    curl -s localhost:7860/api/generate -d '{"prompt": "a red circle at the top left", "seed": 0}'
    -> {"image": "data:image/png;base64,...", "seed": 0, "seconds": {"text_encoder": ..., "steps": [...], ...}}
       (--mini: {"images": [{"model": ..., "image": ..., "seconds": ...}, x3], "seed": 0})

It binds 127.0.0.1 (another --host is reachable from the network: a warning says so), runs one
generation at a time with --queue more waiting (503 beyond), and checks every field (400 naming it).
With --refiner PATH (the SDXL Refiner's folder), a "Refine" button sends the last image's parameters to
POST /api/refine, which regenerates that image and refines it (--refine-strength 0.3 of --refine-steps 50,
--refine-guidance 5, at --refine-size 1024: InstaFlow's demo's defaults; "strength" may come with the request).
"""
import argparse
import signal
import sys
from pathlib import Path

from rectflow.checks import positive_int
from toy.cli import HelpFormatter

from .cli import (DTYPES, ERRORS, add_model_args, add_refine_args, check_model_args, check_refine_args, fail, load_edited,
                  refine_kwargs)
from .sampling.pipeline import check_size, default_sampler
from .sampling.refiner import check_refiner_folder, load_refiner

LOCAL = ("127.0.0.1", "localhost", "::1")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m sd.demo", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(ap, model_required=False)
    ap.add_argument("--mini", type=Path, help="a `python -m sd.mini` run folder: its three models side by side "
                                              "(instead of --model)")
    ap.add_argument("--refiner", type=Path, metavar="PATH", help="the SDXL Refiner (its diffusers folder or model id): "
                                                                  "adds the page's Refine button and POST /api/refine")
    add_refine_args(ap, "refine-")
    ap.add_argument("--size", type=int, default=512, help="the page's default height and width (multiple of 8)")
    ap.add_argument("--max-side", type=int, default=1024, help="the largest height or width a request may ask for")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (another than 127.0.0.1 is reachable from "
                                                        "other machines)")
    ap.add_argument("--port", type=int, default=7860, help="port (0: any free one, printed)")
    ap.add_argument("--queue", type=int, default=4, help="requests that may wait while one generates (503 beyond)")
    return ap


def check_args(ap, args):
    """Everything the command line says, checked before a model loads."""
    if (args.model is None) == (args.mini is None):
        raise ValueError("give --model PATH_OR_ID or --mini RUN_FOLDER (one of them)")
    if args.mini is not None and not (args.mini / "config.json").is_file():
        raise ValueError(f"--mini {args.mini}: not a finished `python -m sd.mini` run (no config.json); run "
                         f"`python -m sd.mini --fast` first (it writes runs/mini-fast)")
    positive_int(args.queue, "--queue")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: outside 0..65535")
    positive_int(args.max_side, "--max-side")
    if args.refiner is not None:
        if args.model is None:
            raise ValueError("--refiner refines a --model's images (not the mini's)")
        check_refine_args(args, "refine-")
        check_refiner_folder(args.refiner)
    if args.model is not None:
        check_size("--size", args.size, 8)
        if args.size > args.max_side:
            raise ValueError(f"--size {args.size} is larger than --max-side {args.max_side}")
        return check_model_args(args)
    return None


def stop(signum, frame):
    """SIGTERM stops the demo as Ctrl-C does (nothing is written to disk, so nothing is left half-done)."""
    raise KeyboardInterrupt


def main(argv=None):
    from .web.backends import MiniBackend, PipelineBackend
    from .web.server import make_server
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        dev = check_args(ap, args)
        if args.mini is not None:
            backend = MiniBackend(args.mini)
        else:
            pipe = load_edited(args, dev)
            sampler = default_sampler(pipe.path) if args.sampler == "auto" else args.sampler
            if args.refiner is not None:
                pipe.refiner = load_refiner(args.refiner, dtype=DTYPES[args.dtype], device=dev)
            refine = {**refine_kwargs(args, "refine-"), "size": args.refine_size}
            backend = PipelineBackend(pipe, str(args.model), args.steps, args.guidance, args.size, sampler, args.max_side,
                                      refine)
        server = make_server(backend, args.host, args.port, args.queue)
    except (*ERRORS, ValueError, OSError) as e:
        return fail(e)
    host, port = server.server_address[:2]
    if args.host not in LOCAL:
        print(f"warning: bound to {args.host}: other machines can reach this demo", file=sys.stderr)
    what = f"{args.dtype} on {dev}" if args.model else "the mini's teacher, 2-RF and student"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a script's background job starts with it ignored
        signal.signal(signal.SIGTERM, stop)
        print(f"demo of {backend.info()['model']} ({what}) at http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:"
              f"{port}/  (Ctrl-C stops it)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
        for s, handler in before.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
