"""mlenv's TensorFlow adapter: what a Keras/TensorFlow project needs from the engine, next to the PyTorch one.

Modules: strategy (one process or MultiWorkerMirroredStrategy from the launcher's torchrun-style
environment), precision (Keras mixed_bfloat16 with a hardware check), checkpoint (tf.train.CheckpointManager
with the data position), callback (a Keras callback bridging model.fit to a run), export (SavedModel with
signature and golden batch, reloaded and checked). Nothing here imports torch.
"""
