"""WebUIRefiner: HandRefiner inside the WebUI, over its loaded model (the always-on script's per-image work and
the REST API's service), with its own models kept between images, and the outcome of one image."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from lib_handrefiner.detection import DetectorUnavailable
from lib_handrefiner.imageio import ImageTooLarge
from lib_handrefiner.mesh import MeshModelError
from lib_handrefiner.models_registry import (
    ModelListing,
    ModelNameError,
    ModelSlots,
    build_listing,
    check_name_safe,
    resolve_name,
)
from lib_handrefiner.settings import AUTOMATIC_SCHEDULER, BUILTIN_SAMPLER, CURRENT_MODEL, HandRefinerArgs, to_infotext
from lib_handrefiner.webui.env import MODEL_USED_KEY, RESULT_KEY, HandRefinerFailure, ImageJob, ImageOutcome, WebUIEnv
from lib_handrefiner.webui.folders import ModelFolders
from lib_handrefiner.webui.progress import WebUIProgress
from lib_handrefiner.webui.sd_adapter import ModelChoice, WebUISDModel, choose_model, inpainting_checkpoints

log = logging.getLogger("handrefiner")

DEFAULT_CONTROLNET_URL = "https://huggingface.co/hr16/ControlNet-HandRefiner-pruned"
API_JOB = "handrefiner"   # the WebUI job name of a /handrefiner/refine run (its console says "Starting job …")


class WebUIRefiner:
    """HandRefiner inside the WebUI: the always-on script's per-image work and the REST API's service
    (`service.HandRefinerService`), over the WebUI's loaded model. Holds HandRefiner's own models (one ControlNet,
    at most one chosen checkpoint, the mesh model), on the CPU between images unless asked to keep them."""

    def __init__(self, env_factory: Callable[[], WebUIEnv]) -> None:
        self.env_factory = env_factory
        self._models = ModelSlots()
        self._busy = threading.Lock()

    # -- HandRefinerService ------------------------------------------------------------------------------

    def listing(self) -> ModelListing:
        env = self.env_factory()
        folders = env.folders
        listing = build_listing(folders.controlnet_dirs, folders.checkpoint_dirs, folders.mesh_dirs)
        listing.samplers, listing.schedulers = sampling_names(env)
        return listing

    def default_controlnet(self) -> Optional[str]:
        names = self.listing().controlnets
        preferred = HandRefinerArgs().controlnet
        if preferred in names:
            return preferred
        hand = sorted(n for n in names if "hand" in n.lower())
        return hand[0] if hand else None

    def perceive(self, image: np.ndarray, args: HandRefinerArgs) -> Any:
        from lib_handrefiner.perception import perceive

        env = self.env_factory()
        try:
            return perceive(image, args, *self._mesh_model(args, env))
        finally:
            self._release(env)

    def refine(self, image: np.ndarray, args: HandRefinerArgs, seed: int, perception: Any = None,
               prompt: str = "", negative_prompt: Optional[str] = None, progress: Optional[WebUIProgress] = None,
               job: Any = None) -> Any:
        """pipeline.refine_image with the WebUI's model (or a checkpoint: choose_model) on the WebUI's device: the
        built-in sampler, or the WebUI's own sampling for a WebUI sampler (`job`: the job's processing object). A
        job's negative prompt is used as it is; without a job (the API, the editor: None) the official one.

        Without a job and a progress (the API) the run is a WebUI job of its own, as the WebUI's own API runs each
        request: state.begin clears an Interrupt or Skip left from before (which the WebUI's samplers would obey at
        their first call, so the hand pass never reached the UNet), and the WebUI's Interrupt stops the run."""
        state = self.env_factory().state if job is None and progress is None else None
        if state is None:
            return self._refine(image, args, seed, perception, prompt, negative_prompt, progress, job)[0]
        state.begin(job=API_JOB)
        try:
            return self._refine(image, args, seed, perception, prompt, negative_prompt, WebUIProgress(state), job)[0]
        finally:
            state.end()

    def _refine(self, image: np.ndarray, args: HandRefinerArgs, seed: int, perception: Any, prompt: str,
                negative_prompt: Optional[str], progress: Optional[WebUIProgress], job: Any
                ) -> Tuple[Any, ModelChoice]:
        """refine(), and the model choice; a choice's note is added to the message of a result that refined."""
        from lib_handrefiner.pipeline import refine_image

        env = self.env_factory()
        try:
            engine = self._webui_engine(args, env, job, progress)
            mesh_model, mesh_warning = self._mesh_model(args, env)
            # The WebUI's sampling (engine) keeps its own precision, prompt handling and progress.
            builtin = engine is None
            with self._models_on_device(args, env, webui_model_only=not builtin) as (sd, controlnet, choice), \
                    torch.no_grad(), env.autocast() if builtin else contextlib.nullcontext():
                result = refine_image(image, sd, controlnet, args, prompt=prompt, negative_prompt=negative_prompt,
                                      seed=seed, mesh_model=mesh_model, perception=perception,
                                      progress=progress.step if progress and builtin else None,
                                      should_stop=progress.should_stop if progress else None, sample_fn=engine,
                                      mesh_warning=mesh_warning)
            if not builtin and result.hands:
                result.message += f" with the WebUI's {describe_sampler(args)}"
            if choice.note and result.hands:
                result.message = f"{result.message} ({choice.note})"
            return result, choice
        finally:
            self._release(env)

    def _webui_engine(self, args: HandRefinerArgs, env: WebUIEnv, job: Any, progress: Optional[WebUIProgress]
                      ) -> Any:
        """sampling.WebUISampling for a WebUI sampler; None for the built-in one."""
        if args.sampler == BUILTIN_SAMPLER:
            return None
        from lib_handrefiner.webui.sampling import WebUISampling

        if env.sampling is None:
            raise HandRefinerFailure(f"this WebUI's samplers are not available to HandRefiner; choose the sampler "
                                     f"{BUILTIN_SAMPLER}")
        if args.inpaint_checkpoint:
            raise HandRefinerFailure(f"the WebUI's samplers sample the WebUI's loaded model, not the chosen "
                                     f"checkpoint {args.inpaint_checkpoint!r}: choose the sampler {BUILTIN_SAMPLER} "
                                     f"for it, or load it as the WebUI's model and choose {CURRENT_MODEL}")
        try:
            return WebUISampling(env.sampling, args.sampler, args.scheduler, job=job,
                                 on_pass=progress.add_pass if progress else None)
        except ValueError as e:
            raise HandRefinerFailure(str(e)) from None

    # -- the always-on script ------------------------------------------------------------------------------

    def process_image(self, job: ImageJob, args: HandRefinerArgs) -> ImageOutcome:
        """Refines one generated image. Never raises: on any failure the image is kept and the outcome's message
        says why (also logged). Re-entrant calls (the inner pass reaching the script again) are refused."""
        infotext = to_infotext(args)
        if not self._busy.acquire(blocking=False):
            message = "skipped: HandRefiner is already running (re-entry)"
            return ImageOutcome(job.image, message, False, {**infotext, RESULT_KEY: message})
        progress = None
        try:
            env = self.env_factory()
            progress = WebUIProgress(env.state, env.total_tqdm) if env.state is not None else None
            if progress is not None:
                progress.begin()
            seed = args.seed if args.seed >= 0 else job.seed
            result, choice = self._refine(np.asarray(job.image.convert("RGB")), args, seed, None, job.prompt,
                                          job.negative_prompt, progress, job.p)
            outcome = outcome_from_result(job, args, result)
            if choice.chosen_by_handrefiner and result.hands:
                outcome.infotext[MODEL_USED_KEY] = choice.checkpoint
            outcome.infotext = {**infotext, **outcome.infotext}
            log.info("HandRefiner: %s", outcome.message)
            return outcome
        except Exception as e:  # the user's image must survive anything HandRefiner does
            message = failure_message(e)
            if isinstance(e, (HandRefinerFailure, ModelNameError, FileNotFoundError, DetectorUnavailable,
                              MeshModelError, ImageTooLarge)):
                log.warning("HandRefiner: %s", message)
            else:
                log.exception("HandRefiner: %s", message)
            return ImageOutcome(job.image, message, False, {**infotext, RESULT_KEY: message})
        finally:
            if progress is not None:
                progress.end()
            self._busy.release()

    # -- models ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _models_on_device(self, args: HandRefinerArgs, env: WebUIEnv, webui_model_only: bool = False
                          ) -> Iterator[Tuple[Any, Any, ModelChoice]]:
        """The SD model (its prompts through prompts' encoders), the ControlNet, and the model choice
        (choose_model; `webui_model_only` for the WebUI's samplers)."""
        from lib_handrefiner.webui.prompts import OwnPromptEncoder, WebUIPromptEncoder, WithPromptEncoder

        listing = self.listing()
        controlnet = self._controlnet(args.controlnet, listing, env)
        ldm = env.sd_model()
        choice = choose_model(args.inpaint_checkpoint, ldm, lambda: inpainting_checkpoints(listing), webui_model_only)
        scheduling = dict(steps=args.steps, use_old_scheduling=bool(getattr(env.opts, "use_old_scheduling", False)))
        ready = contextlib.nullcontext()
        if choice.checkpoint:
            model = self._checkpoint(choice.checkpoint, listing, env)
            model.to(env.device)
        else:
            backend = env.backend(ldm)
            model = WebUISDModel(ldm, env.device, env.dtype, env.devices, env.opts, backend)
            ready = backend.unet_ready(ldm)
        encoder = WebUIPromptEncoder(ldm, env.prompt_parser, env.extra_networks, **scheduling) \
            if choice.webui_prompts else OwnPromptEncoder(model, env.prompt_parser, env.extra_networks, **scheduling)
        controlnet.to(env.device)
        with ready, _without_controlnet_extension_hook(model.unet):
            yield WithPromptEncoder(model, encoder), controlnet, choice

    def _release(self, env: WebUIEnv) -> None:
        """After each image: HandRefiner's own models back to the CPU (unless kept), the device's cache freed."""
        if not env.keep_models_on_device or env.offload_to_cpu:
            for model in self._models.models():
                if isinstance(model, torch.nn.Module):
                    model.to("cpu")
        env.torch_gc()

    def _controlnet(self, name: str, listing: ModelListing, env: WebUIEnv) -> Any:
        from lib_handrefiner.controlnet import load_controlnet

        try:
            path = resolve_name(name, listing.controlnets, "ControlNet")
        except ModelNameError as e:
            raise HandRefinerFailure(f"{e}{_controlnet_hint(name, env.folders)}") from None
        return self._models.get("controlnet", (path, env.dtype), lambda: load_controlnet(path, "cpu", env.dtype))

    def _checkpoint(self, name: str, listing: ModelListing, env: WebUIEnv) -> Any:
        from lib_handrefiner.sd_model import find_config, load_sd_checkpoint

        try:
            path = resolve_name(name, listing.checkpoints, "checkpoint")
        except ModelNameError as e:
            raise HandRefinerFailure(f"{e}; the checkpoints HandRefiner can load are in "
                                     f"{env.folders.describe('checkpoint')}") from None
        return self._models.get("checkpoint", (path, env.dtype),
                            lambda: load_sd_checkpoint(path, find_config(path), "cpu", env.dtype))

    def _mesh_model(self, args: HandRefinerArgs, env: WebUIEnv) -> Tuple[Any, str]:
        """(model, warning) for the settings, on the WebUI's device (back to the CPU after the image, like the
        ControlNet) and, on a GPU, in its precision. MeshModelError (the image is kept, the message in the
        infotext) names each missing or wrong file and where to get it."""
        on_gpu = torch.device(env.device).type == "cuda"
        model, warning = self._models.mesh_model(args.mesh_model, env.folders.mesh_dirs, args.mesh_fallback,
                                                 "cpu", env.dtype if on_gpu else torch.float32)
        if isinstance(model, torch.nn.Module):
            model.to(env.device)
        if warning:
            log.warning("HandRefiner: %s", warning)
        return model, warning


def sampling_names(env: WebUIEnv) -> Tuple[List[str], List[str]]:
    """(samplers, schedule types) `sampler` and `scheduler` may name: the built-in sampler, and with the WebUI's
    sampling at hand every sampler and schedule type it lists."""
    if env.sampling is None:
        return [BUILTIN_SAMPLER], [AUTOMATIC_SCHEDULER]
    from lib_handrefiner.webui.sampling import all_sampler_names, scheduler_choices

    return [BUILTIN_SAMPLER] + all_sampler_names(env.sampling), scheduler_choices(env.sampling)


def describe_sampler(args: HandRefinerArgs) -> str:
    """ "Euler a" or "DPM++ 2M (Karras)": the sampler, and the schedule type when it is not Automatic."""
    return args.sampler + (f" ({args.scheduler})" if args.scheduler != AUTOMATIC_SCHEDULER else "")


def _controlnet_hint(name: Any, folders: ModelFolders) -> str:
    """Where to put the HandRefiner ControlNet, after "not an available model"; nothing after an error about the
    name itself (a path, not a string), which says what to give instead."""
    try:
        check_name_safe(name, "ControlNet")
    except ModelNameError:
        return ""
    return (f". Put the HandRefiner ControlNet (control_sd15_inpaint_depth_hand_fp16, from {DEFAULT_CONTROLNET_URL}) "
            f"in one of: {folders.describe('controlnet')}")


@contextlib.contextmanager
def _without_controlnet_extension_hook(unet: Any) -> Iterator[None]:
    """sd-webui-controlnet replaces `unet.forward` for the whole job when one of its units is on (keeping the
    original as `unet._original_forward`); its control is for the full image, not HandRefiner's hand crop. Our own
    control is hooks on the UNet's modules, which run under either forward; this only sets the original forward
    back for the duration of HandRefiner's pass."""
    patched = unet.__dict__.get("forward")
    original = getattr(unet, "_original_forward", None)
    if patched is None or original is None:
        yield
        return
    unet.forward = original
    try:
        yield
    finally:
        unet.forward = patched


def outcome_from_result(job: ImageJob, args: HandRefinerArgs, result: Any) -> ImageOutcome:
    from PIL import Image

    from lib_handrefiner.pipeline import hand_boxes_infotext, meshes_infotext, tried_infotext

    refined = bool(result.hands)
    strengths = sorted({f"{h.strength:g}" for h in result.hands})
    summary = result.message + (f" (strength {', '.join(strengths)})" if strengths and args.mode == "adaptive" else "")
    previews = []   # only for a refined image: without hands they would be all black
    if args.save_depth and refined:
        previews.append(("-handrefiner-depth", Image.fromarray(result.perception.depth).convert("RGB")))
    if args.save_mask and refined:
        previews.append(("-handrefiner-mask", Image.fromarray(result.perception.mask).convert("RGB")))
    image = Image.fromarray(result.image) if refined else job.image
    return ImageOutcome(image, summary, refined,
                        {RESULT_KEY: summary, **tried_infotext(result.hands), **meshes_infotext(result.hands),
                         **hand_boxes_infotext(result.hands)},
                        previews)


def failure_message(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__  # one line (a mesh error lists files on lines)
    if "out of memory" in text.lower() or type(error).__name__ == "OutOfMemoryError":
        return ("failed: out of GPU memory; the image is kept. Lower HandRefiner's crop resolution, refine hands "
                "one after another, or start the WebUI with --medvram")
    return f"failed: {text}; the image is kept"
