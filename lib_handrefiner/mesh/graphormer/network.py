"""Mesh Graphormer's hand network (Lin, Wang, Liu 2021; microsoft/MeshGraphormer, FreiHAND model).

An HRNet-W64 image feature and 49 grid features, with a template hand (21 joints + 195 sub-sampled vertices, MANO's
mean pose), go through three transformer encoders that shrink the token width 2051 → 512 → 128 → 3; the last
encoder has a graph residual block on the vertex tokens (the 195-vertex mesh adjacency). The output tokens are 3D
joints and coarse vertices; a learned linear map upsamples the vertices to MANO's 778, and a small head on the
tokens predicts the weak-perspective camera (s, tx, ty).

Names and order of parameters follow the released `graphormer_hand_state_dict.bin`, so it loads strictly. The
BERT word / token-type / position embeddings inside each encoder, its pooler and the graph block's `skip_conv`
are in the checkpoint but unused by the forward pass (as in the original).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from lib_handrefiner.mesh.graphormer.hrnet import FEATURE_DIM, GRID_DIM, HRNetW64
from lib_handrefiner.mesh.graphormer.mano import NUM_SUB_VERTICES, NUM_VERTICES

NUM_JOINTS = 21
GRID_TOKENS = 49            # 7×7 HRNet grid features for a 224² input
INPUT_SIZE = 224
LAYER_NORM_EPS = 1e-12      # BERT's; the original's TF-style layer norm
BERT_VOCAB = 30522
BERT_TYPE_VOCAB = 2
BERT_MAX_POSITIONS = 512


@dataclass(frozen=True)
class EncoderConfig:
    input_dim: int
    hidden: int
    output_dim: int
    graph_conv: bool
    layers: int = 4
    heads: int = 4

    @property
    def intermediate(self) -> int:
        return 2 * self.hidden


# HandRefiner's preprocessor (and MeshGraphormer's hand demo): input_feat_dim 2051,512,128; hidden 1024,256,64;
# graph convolution in the last block only.
HAND_ENCODERS = (
    EncoderConfig(FEATURE_DIM + 3, 1024, 512, graph_conv=False),
    EncoderConfig(512, 256, 128, graph_conv=False),
    EncoderConfig(128, 64, 3, graph_conv=True),
)


def _layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=LAYER_NORM_EPS)


class _DenseNorm(nn.Module):
    """BERT's output sublayer: LayerNorm(dense(x) + residual)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = _layer_norm(cout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        # Every token attends to every token (the original's attention mask is all ones).
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _DenseNorm(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class _GraphLinear(nn.Module):
    """A per-vertex linear map stored as `W` (out, in) and `b`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(cout, cin))
        self.b = nn.Parameter(torch.empty(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.W, self.b)


class _GraphConvolution(nn.Module):
    """A · (x W) + b over the 195-vertex mesh; A (row-normalised adjacency with self-loops) is data, not a
    weight: a non-persistent buffer set from MANO's sampling file (see mano.graph_adjacency)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cin, cout))
        self.bias = nn.Parameter(torch.empty(cout))
        self.register_buffer("adjacency", torch.zeros(NUM_SUB_VERTICES, NUM_SUB_VERTICES), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.adjacency, torch.matmul(x, self.weight)) + self.bias


class _GraphResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.lin1 = _GraphLinear(width, half)
        self.conv = _GraphConvolution(half, half)
        self.lin2 = _GraphLinear(half, width)
        self.skip_conv = _GraphLinear(width, width)  # in the checkpoint; the original's forward never uses it
        self.pre_norm = _layer_norm(width)
        self.norm1 = _layer_norm(half)
        self.norm2 = _layer_norm(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin1(F.relu(self.pre_norm(x)))
        y = self.conv(F.relu(self.norm1(y)))
        y = self.lin2(F.relu(self.norm2(y)))
        return x + y


class _EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attention = _Attention(config.hidden, config.heads)
        if config.graph_conv:
            self.graph_conv = _GraphResBlock(config.hidden)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(config.hidden, config.intermediate)
        self.output = _DenseNorm(config.intermediate, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        if hasattr(self, "graph_conv"):
            joints, vertices, grid = x.split([NUM_JOINTS, x.shape[1] - NUM_JOINTS - GRID_TOKENS, GRID_TOKENS], dim=1)
            x = torch.cat([joints, self.graph_conv(vertices), grid], dim=1)
        # BERT's exact (erf) GELU
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Embeddings(nn.Module):
    """BERT's token embeddings: in the checkpoint, unused (the tokens are image features, not words)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(BERT_VOCAB, hidden)
        self.position_embeddings = nn.Embedding(BERT_MAX_POSITIONS, hidden)
        self.token_type_embeddings = nn.Embedding(BERT_TYPE_VOCAB, hidden)
        self.LayerNorm = _layer_norm(hidden)


class _Bert(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config.hidden)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_EncoderLayer(config) for _ in range(config.layers))
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(config.hidden, config.hidden)  # in the checkpoint; unused
        self.position_embeddings = nn.Embedding(BERT_MAX_POSITIONS, config.hidden)
        self.img_embedding = nn.Linear(config.input_dim, config.hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.img_embedding(tokens) + self.position_embeddings.weight[:tokens.shape[1]]
        for layer in self.encoder.layer:
            x = layer(x)
        return x


class GraphormerEncoder(nn.Module):
    """One transformer encoder block of Mesh Graphormer: (B, N, input_dim) → (B, N, output_dim), with a linear
    shortcut from the input."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.bert = _Bert(config)
        self.cls_head = nn.Linear(config.hidden, config.output_dim)
        self.residual = nn.Linear(config.input_dim, config.output_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.bert(tokens)) + self.residual(tokens)


class GraphormerHandNetwork(nn.Module):
    def __init__(self, adjacency: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.backbone = HRNetW64()
        self.trans_encoder = nn.Sequential(*[GraphormerEncoder(c) for c in HAND_ENCODERS])
        self.upsampling = nn.Linear(NUM_SUB_VERTICES, NUM_VERTICES)
        self.cam_param_fc = nn.Linear(3, 1)
        self.cam_param_fc2 = nn.Linear(NUM_SUB_VERTICES + NUM_JOINTS, 150)
        self.cam_param_fc3 = nn.Linear(150, 3)
        self.grid_feat_dim = nn.Linear(GRID_DIM, FEATURE_DIM + 3)
        self._has_adjacency = False
        if adjacency is not None:
            self.set_adjacency(adjacency)

    def graph_convolutions(self):
        return [m for m in self.modules() if isinstance(m, _GraphConvolution)]

    def set_adjacency(self, adjacency: torch.Tensor) -> None:
        """The (195, 195) adjacency of the sub-sampled mesh, for every graph convolution."""
        if tuple(adjacency.shape) != (NUM_SUB_VERTICES, NUM_SUB_VERTICES):
            raise ValueError(f"adjacency must be {NUM_SUB_VERTICES}×{NUM_SUB_VERTICES}, got {tuple(adjacency.shape)}")
        for conv in self.graph_convolutions():
            conv.adjacency = adjacency.to(device=conv.weight.device, dtype=conv.weight.dtype)
        self._has_adjacency = True

    def drop_unused(self) -> None:
        """Frees what the checkpoint holds but the forward pass never uses (each encoder's BERT embeddings and
        pooler, the graph blocks' skip_conv, HRNet's ImageNet classifier): 44.9 M of the 213.7 M parameters, 21 %
        of the memory. Call it after loading the state dict."""
        for encoder in self.trans_encoder:
            del encoder.bert.embeddings, encoder.bert.pooler
            for layer in encoder.bert.encoder.layer:
                if hasattr(layer, "graph_conv"):
                    del layer.graph_conv.skip_conv
        del self.backbone.classifier

    def forward(self, images: torch.Tensor, template_joints: torch.Tensor, template_vertices_sub: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, 3, 224, 224) ImageNet-normalised RGB; the template's joints (21, 3) and sub-sampled
        vertices (195, 3), wrist-centred, metres. Returns (camera (B, 3) = (s, tx, ty), joints (B, 21, 3),
        sub-sampled vertices (B, 195, 3), vertices (B, 778, 3)), in the template's frame and units."""
        if not self._has_adjacency:
            raise RuntimeError("the mesh adjacency is not set (set_adjacency, from mano_downsampling.npz)")
        batch = images.shape[0]
        template = torch.cat([template_joints, template_vertices_sub]).to(images.dtype)
        pooled, grid = self.backbone(images)
        queries = torch.cat([template.expand(batch, -1, -1),
                             pooled[:, None, :].expand(-1, template.shape[0], -1)], dim=2)
        grid_tokens = self.grid_feat_dim(grid.flatten(2).transpose(1, 2))
        out = self.trans_encoder(torch.cat([queries, grid_tokens], dim=1))
        mesh_tokens = out[:, :-GRID_TOKENS]
        joints, vertices_sub = mesh_tokens[:, :NUM_JOINTS], mesh_tokens[:, NUM_JOINTS:]
        camera = self.cam_param_fc3(self.cam_param_fc2(self.cam_param_fc(mesh_tokens).transpose(1, 2)))[:, 0]
        vertices = self.upsampling(vertices_sub.transpose(1, 2)).transpose(1, 2)
        return camera, joints, vertices_sub, vertices
