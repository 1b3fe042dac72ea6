"""``lossbench distributed``: the vocabulary-parallel losses scaled out over torch.distributed.

Modules: ``collectives`` (counting what a step communicates), ``implementations`` (ours and the
peers, per rank), ``worker`` (one rank's measurements), ``launch`` (starting the ranks: torch's
elastic launcher, or torchrun's environment, or one process with a fake group), ``results`` (the
CSV and the scaling plot), ``cli`` (the command).
"""
