"""Diagnostics of a model and its training: what the gates, the loss surface, the hidden states and attention do.

Import the submodules themselves; this package imports nothing, so ``import longshort.diagnostics`` costs nothing
(the analysis modules pull in scipy and build hooks only when used):

- :mod:`longshort.diagnostics.monitor`: what the trainer checks at every step (gradient norms, spikes and their
  action, NaN/Inf, gate samples) and the ``diagnostics:`` config section;
- :mod:`longshort.diagnostics.gates`: gate activation statistics of the LSTMs against seed 003's healthy ranges;
- :mod:`longshort.diagnostics.landscape`: filter-normalised loss slices, the top Hessian eigenvalue, gradient
  predictiveness;
- :mod:`longshort.diagnostics.information`: mutual information of hidden states with the label and future targets;
- :mod:`longshort.diagnostics.attention`: the attention weights of a classifier's attention blocks;
- :mod:`longshort.diagnostics.analyse`: all of them on a finished run directory, written to ``RUN_DIR/diagnostics/``.
"""
