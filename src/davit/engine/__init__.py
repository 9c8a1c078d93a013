"""The workflows behind ``davit test`` / ``tools/test.py`` (:mod:`.evaluate`) and ``davit train``
/ ``tools/train.py`` (:mod:`.train`, which builds a :class:`~.state.TrainState` and runs
:class:`~.trainer.Trainer`), with the pieces they share: evaluation primitives
(:mod:`.predict`), reports (:mod:`.reports`), the training-checkpoint layout
(:mod:`.train_checkpoint`) and multi-process helpers (:mod:`.distributed`)."""
