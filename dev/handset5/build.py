"""Rebuilds the images of dev/handset5 (a fifth set of real-world images with hands, for measuring the hand
search; the images are not shipped: their licences vary, several are non-commercial and several show real people)
from fetched bare git mirrors: `MIRROR=/path/to/mirrors python dev/handset5/build.py OUT_DIR`, where a mirror of
owner/name is MIRROR/owner+name/repo (dev/handsets.py does the work)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from handsets import rebuild  # noqa: E402

# The commit of each source repository
COMMITS = {
    "ltdrdata/ComfyUI-Impact-Pack": "eae32b4af34375b3d916facb0888fca8ea5489e3",
    "hako-mikan/sd-webui-regional-prompter": "c9fdf2ddeb7184c96fd2116b4b10364ea0195698",
    "PixArt-alpha/PixArt-alpha": "cac2fd3b4544cf7620d8fbbf8b19d97ffcb85892",
    "CompVis/stable-diffusion": "21f890f9da3cfbeaba8e2ac3c425ee9e998d5229",
    "mks0601/Hand4Whole_RELEASE": "c94908654b8108f241f18f04b4a493c05137edf6",
    "SeanChenxy/HandMesh": "3c87e958d4855f890e3884ec94bcfc0f99422c3d",
    "facebookresearch/InterHand2.6M": "5d0e456f2345ef524bf71374141fbf3e11dd93f8",
}
# file, repository, path, crop
ITEMS = [
    ("ip_jump_street.png", "ltdrdata/ComfyUI-Impact-Pack", "misc/2pass-original.png", None),
    ("ip_whitehair_studio.png", "ltdrdata/ComfyUI-Impact-Pack", "misc/combination-2pass-original.png", None),
    ("ip_office_book.png", "ltdrdata/ComfyUI-Impact-Pack", "tutorial/advanced-simple-original.png", None),
    ("rp_miku_handshake.jpg", "hako-mikan/sd-webui-regional-prompter", "sample2.jpg", None),
    ("rp_blonde_umbrella_reach.png", "hako-mikan/sd-webui-regional-prompter", "ptutorial10.png",
     (1536, 0, 1920, 576)),
    ("ip_cowgirl_gun.png", "ltdrdata/ComfyUI-Impact-Pack", "misc/face-off-original.png", None),
    ("ip_greenhair_sunglasses.png", "ltdrdata/ComfyUI-Impact-Pack", "misc/maskpainter-original.png", None),
    ("rp_pointing_girl.png", "hako-mikan/sd-webui-regional-prompter", "psample1.png", (512, 0, 768, 384)),
    ("rp_forest_girl.png", "hako-mikan/sd-webui-regional-prompter", "ptutorial1.png", (256, 0, 512, 384)),
    ("pa_painter_brush.png", "PixArt-alpha/PixArt-alpha", "asset/images/more-samples1.png", (0, 0, 900, 900)),
    ("pa_baby_painter.png", "PixArt-alpha/PixArt-alpha", "asset/images/more-samples1.png", (18, 951, 328, 1261)),
    ("pa_kitchen_couple.png", "PixArt-alpha/PixArt-alpha", "asset/images/controlnet/0_3.png", None),
    ("cv_two_men_bench.png", "CompVis/stable-diffusion", "data/inpainting_examples/alex-iby-G_Pk4D9rMLs.png", None),
    ("cv_two_women_bench.png", "CompVis/stable-diffusion", "data/inpainting_examples/billow926-12-Wc-Zgx6Y.png",
     None),
    ("cv_girl_bench.png", "CompVis/stable-diffusion", "data/inpainting_examples/bench2.png", None),
    ("cv_man_bench.png", "CompVis/stable-diffusion", "data/inpainting_examples/8399166846_f6fb4e4b8e_k.png", None),
    ("cv_woman_bench_street.png", "CompVis/stable-diffusion",
     "data/inpainting_examples/photo-1583445095369-9c651e7e5d34.png", None),
    ("h4w_party_group.png", "mks0601/Hand4Whole_RELEASE", "demo/input.png", None),
    ("ip_white_dress.png", "ltdrdata/ComfyUI-Impact-Pack", "misc/simple-original.png", None),
    ("rp_umbrella_girl.png", "hako-mikan/sd-webui-regional-prompter", "ptutorial11.png", (0, 0, 384, 576)),
    ("rp_blonde_umbrella_bag.png", "hako-mikan/sd-webui-regional-prompter", "ptutorial10.png", (0, 0, 384, 576)),
    ("cv_woman_cigarette.png", "CompVis/stable-diffusion", "data/inpainting_examples/6458524847_2f4c361183_k.png",
     None),
    ("hm_bottle.jpg", "SeanChenxy/HandMesh", "cmr/images/126_img.jpg", None),
    ("hm_two_hands_paper.jpg", "SeanChenxy/HandMesh", "cmr/images/3255_img.jpg", None),
    ("hm_woman_reaching.jpg", "SeanChenxy/HandMesh", "cmr/images/3790_img.jpg", None),
    ("hm_floral_palm.jpg", "SeanChenxy/HandMesh", "cmr/images/64_img.jpg", None),
    ("ih_hands_together.jpg", "facebookresearch/InterHand2.6M", "demo/input.jpg", None),
]


if __name__ == "__main__":
    rebuild(COMMITS, ITEMS, os.environ["MIRROR"], sys.argv[1])
