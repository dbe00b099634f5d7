"""Rebuilds the images of dev/handset3 (a third set of real-world images with hands, for measuring the hand
search; the images are not shipped: their licences vary and several show real people) from fetched bare git
mirrors: `MIRROR=/path/to/mirrors python dev/handset3/build.py OUT_DIR`, where a mirror of owner/name is
MIRROR/owner+name/repo (dev/handsets.py does the work)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from handsets import rebuild  # noqa: E402

# The commit of each source repository
COMMITS = {
    "ultralytics/assets": "42ef8a125df038dcca49f6216f446fe9112946c1",
    "open-mmlab/mmpose": "759b39c13fea6ba094afc1fa932f51dc1b11cbf9",
    "comfyanonymous/ComfyUI_examples": "f9431bb000ce792094ff345446e22cac1ea6cef3",
    "Haozhuo-Zhang/Hand1000": "d27a8f96b4047f2ed7864278dab0dd99b8b07922",
    "microsoft/MeshGraphormer": "27f7cdb33d2ce9e77969352e71a4e84eb5d9a522",
}
# file, repository, path, crop
ITEMS = [
    ("h1k_sd_phone_man.png", "Haozhuo-Zhang/Hand1000", "imgs/results.jpg", (1558, 10, 1677, 130)),
    ("h1k_sd_fingers_lips.png", "Haozhuo-Zhang/Hand1000", "imgs/results.jpg", (2065, 10, 2184, 130)),
    ("h1k_sd_thumbs_up.png", "Haozhuo-Zhang/Hand1000", "imgs/results.jpg", (1558, 341, 1677, 462)),
    ("h1k_sd_ok_sign.png", "Haozhuo-Zhang/Hand1000", "imgs/results.jpg", (1931, 341, 2051, 462)),
    ("cf_three_girls_running.png", "comfyanonymous/ComfyUI_examples",
     "noisy_latent_composition/noisy_latents_3_subjects.png", None),
    ("cf_anime_pose_five_girls.png", "comfyanonymous/ComfyUI_examples", "controlnet/2_pass_pose_worship.png", None),
    ("cf_fennec_sing.png", "comfyanonymous/ComfyUI_examples", "chroma/fennec_girl_sing.png", None),
    ("cf_sd3_anime.png", "comfyanonymous/ComfyUI_examples", "sd3/sd3_anime_example.png", None),
    ("cf_lumina2_maid.png", "comfyanonymous/ComfyUI_examples", "lumina2/lumina2_basic_example.png", None),
    ("cf_kontext_comic_bench.png", "comfyanonymous/ComfyUI_examples", "flux/flux_kontext_example_comic.webp",
     (0, 0, 1024, 1024)),
    ("cf_hidream_sled.png", "comfyanonymous/ComfyUI_examples", "hidream/hidream_full_example.png", None),
    ("cf_omnigen2_burger.png", "comfyanonymous/ComfyUI_examples", "omnigen/omnigen2_example.png", None),
    ("ul_bus.jpg", "ultralytics/assets", "im/bus.jpg", None),
    ("mm_coco785_skier.jpg", "open-mmlab/mmpose", "tests/data/coco/000000000785.jpg", None),
    ("mm_coco196141_baseball.jpg", "open-mmlab/mmpose", "tests/data/coco/000000196141.jpg", None),
    ("mm_coco197388_skiers.jpg", "open-mmlab/mmpose", "tests/data/coco/000000197388.jpg", None),
    ("mm_crowdpose103319_truck.jpg", "open-mmlab/mmpose", "tests/data/crowdpose/103319.jpg", None),
    ("mm_ochuman817_walkers.jpg", "open-mmlab/mmpose", "tests/data/ochuman/000817.jpg", None),
    ("mm_aic_football.jpg", "open-mmlab/mmpose", "tests/data/aic/ff945ae2e729f24eea992814639d59b3bdec8bd8.jpg", None),
    ("mm_mpii051423444_truck.jpg", "open-mmlab/mmpose", "tests/data/mpii/051423444.jpg", None),
    ("mm_coco40083_street.jpg", "open-mmlab/mmpose", "tests/data/coco/000000040083.jpg", None),
    ("cf_cosmos_dough.png", "comfyanonymous/ComfyUI_examples",
     "cosmos_predict2/cosmos_predict2_2b_t2i_example.png", None),
    ("cf_zimage_polaroid.png", "comfyanonymous/ComfyUI_examples", "z_image/z_image_turbo_example.png", None),
    ("cf_flux2_card.png", "comfyanonymous/ComfyUI_examples", "flux2/flux2_example.png", None),
    ("mg_icecream.jpg", "microsoft/MeshGraphormer", "samples/hand/internet_fig1.jpg", None),
    ("mg_banana.jpg", "microsoft/MeshGraphormer", "samples/hand/internet_fig3.jpg", None),
    ("ul_zidane.jpg", "ultralytics/assets", "im/zidane.jpg", None),
    ("mm_crowdpose106848_cake.jpg", "open-mmlab/mmpose", "tests/data/crowdpose/106848.jpg", None),
    ("mm_mhp10084_basketball.jpg", "open-mmlab/mmpose", "tests/data/mhp/10084.jpg", None),
    ("mm_mpii052475643_talk.jpg", "open-mmlab/mmpose", "tests/data/mpii/052475643.jpg", None),
]


if __name__ == "__main__":
    rebuild(COMMITS, ITEMS, os.environ["MIRROR"], sys.argv[1])
