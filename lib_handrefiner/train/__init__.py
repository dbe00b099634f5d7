"""Fine-tuning the hand ControlNet (paper §3.4, §4.1): data preparation, the masked objective, the loop.

Only the ControlNet trains; the SD 1.5 inpainting UNet, its VAE and its text encoder stay frozen (no gradients,
no optimizer state, eval mode, bit-identical afterwards). The modules, in the order data flows through them:

- `folder`: the training dataset folder (image/, mask/, pose/, prompt.json: the official loader's layout);
- `sources`: readers of RHD_published_v2, the Synthesis AI static gestures and plain photo folders;
- `prepare`: source samples → 512² crops around the hands with mask and depth hint, broken samples dropped;
- `dataset`: the folder as training samples; the order of samples and their per-sample randomness;
- `objective`: paper eq. 4, the noise-prediction error masked to the hand;
- `loop`: AdamW, gradient accumulation, mixed precision, progress, checkpoints, validation;
- `checkpoint`, `validation`, `distributed`: resumable state, the strength grid, many processes.
"""
