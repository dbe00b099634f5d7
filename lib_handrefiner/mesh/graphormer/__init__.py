"""Mesh Graphormer, the hand mesh of the HandRefiner paper, from the released checkpoint.

- `hrnet.py`: the HRNet-W64 backbone; `network.py`: `GraphormerHandNetwork` (state dict = the released
  graphormer_hand_state_dict.bin's);
- `mano.py`: the MANO template, joint regressor and mesh adjacency the network needs.
"""
