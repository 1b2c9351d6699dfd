"""The applications the jobs compose: the foundation encoder's pre-training (:mod:`.foundation`), masked
autoencoder pre-training on a dataset's own images (:mod:`.mae`), the paper tables from tracked runs
(:mod:`.report`), label maps and overlays (:mod:`.predict`) and ST / ST++'s pseudo labels and stability
ranking (:mod:`.pseudo_labels`). They sit above the engine and below :mod:`unimatch.jobs`."""
