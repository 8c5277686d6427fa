"""Distillation methods. A method declares what it needs from each forward and turns typed
outputs into named loss terms; the LightningModule runs the forwards, weights and logs the terms.
See :class:`distillkit.methods.base.Method` for the contract."""
