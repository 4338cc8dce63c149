"""Shipping a trained run: export, quantization, a torch-free runtime, streaming and pruning.

Modules (import the one you need; this package imports nothing, so that :mod:`longshort.deploy.runtime` works
on a machine without torch):

- :mod:`longshort.deploy.export`: ONNX and ``torch.export`` artefacts with dynamic batch and length, each
  checked against the eager model (``longshort export``);
- :mod:`longshort.deploy.exportable`: the classifier with its LSTMs and convolutions swapped for traceable
  modules, whose own forward the exports trace;
- :mod:`longshort.deploy.quantize`: dynamic 8-bit quantization of the ONNX export with onnxruntime;
- :mod:`longshort.deploy.runtime`: :class:`~longshort.deploy.runtime.OnnxPredictor`, numpy and onnxruntime only;
- :mod:`longshort.deploy.predictor`: the fastest available way to predict with a run;
- :mod:`longshort.deploy.streaming`: a causal classifier one step (or chunk) at a time;
- :mod:`longshort.deploy.prune`: magnitude pruning of a run.
"""
