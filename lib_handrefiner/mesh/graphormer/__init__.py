"""Mesh Graphormer, the hand mesh of the HandRefiner paper, from the released checkpoint.

- `hrnet.py`: the HRNet-W64 backbone; `network.py`: `GraphormerHandNetwork` (state dict = the released
  graphormer_hand_state_dict.bin's);
- `mano.py`: the MANO template, joint regressor and mesh adjacency the network needs;
- `files.py`: the three files the user supplies: where they are looked for, the message for a missing or wrong
  one, reading them without running anything;
- `model.py`: `GraphormerMeshModel`, the mesh model (`get_mesh_model("graphormer", models_dir)`), which crops,
  runs and places each hand exactly as the official preprocessor does.
"""
