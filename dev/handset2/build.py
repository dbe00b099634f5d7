"""Rebuilds the images of dev/handset2 (a second set of real-world images with hands, for measuring the hand
search; the images are not shipped: their licences vary and several show real people) from fetched bare git
mirrors: `MIRROR=/path/to/mirrors python dev/handset2/build.py OUT_DIR`, where a mirror of owner/name is
MIRROR/owner+name/repo (dev/handsets.py does the work)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from handsets import rebuild  # noqa: E402

# The commit of each source repository
COMMITS = {
    "stepfun-ai/Step1X-Edit": "570eba6ebda0c45c013983a483afbf2fd12bfcbc",
    "lllyasviel/ControlNet": "ed85cd1e25a5ed592f7d8178495b4483de0331bf",
    "magic-research/magic-animate": "d2bc3bc3c9cc3dadeedef8a02668dd5582d10a01",
    "MooreThreads/Moore-AnimateAnyone": "a914ef38aae3733c2f02f29853dd0593372e0cc9",
    "Stability-AI/generative-models": "0ad7de9a5cb53fd63d6d30a4f385485e72e08597",
    "CMU-Perceptual-Computing-Lab/openpose": "5c5d96523ef917bd30301245fdc8343937cae48d",
    "Stability-AI/stablediffusion": "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
}
# file, repository, path, crop
ITEMS = [
    ("s1x_fixhand_axe.png", "stepfun-ai/Step1X-Edit",
     "examples/eval_fix_hand_000.png", None),
    ("s1x_fixhand_peace.png", "stepfun-ai/Step1X-Edit",
     "examples/eval_fix_hand_001.png", None),
    ("cn_chef_cutting.png", "lllyasviel/ControlNet",
     "github_page/p11.png", (838, 431, 1077, 790)),
    ("cn_chef_fists.png", "lllyasviel/ControlNet",
     "github_page/p11.png", (1205, 431, 1444, 790)),
    ("cn_chef_greens.png", "lllyasviel/ControlNet",
     "github_page/p11.png", (838, 798, 1077, 1157)),
    ("s1x_anime_gloves.png", "stepfun-ai/Step1X-Edit",
     "examples/0001.png", None),
    ("s1x_anime_bass.jpg", "stepfun-ai/Step1X-Edit",
     "examples/0002.jpg", None),
    ("s1x_poster_skier.jpg", "stepfun-ai/Step1X-Edit",
     "examples/0004.jpg", None),
    ("ma_monalisa.png", "magic-research/magic-animate",
     "inputs/applications/source_image/monalisa.png", None),
    ("maa_anime_clasped.png", "MooreThreads/Moore-AnimateAnyone",
     "configs/inference/ref_images/anyone-1.png", None),
    ("maa_anime_fullbody.png", "MooreThreads/Moore-AnimateAnyone",
     "configs/inference/ref_images/anyone-5.png", None),
    ("sgm_naruto_painterly.png", "Stability-AI/generative-models",
     "assets/000.jpg", (2358, 704, 3246, 2048)),
    ("maa_fashion_woman.png", "MooreThreads/Moore-AnimateAnyone",
     "configs/inference/ref_images/anyone-3.png", None),
    ("maa_fashion_man.png", "MooreThreads/Moore-AnimateAnyone",
     "configs/inference/ref_images/anyone-11.png", None),
    ("cn_pose2_coat.png", "lllyasviel/ControlNet",
     "test_imgs/pose2.png", None),
    ("op_coco536_three_women.jpg", "CMU-Perceptual-Computing-Lab/openpose",
     "examples/media/COCO_val2014_000000000536.jpg", None),
    ("op_coco328_cadets.jpg", "CMU-Perceptual-Computing-Lab/openpose",
     "examples/media/COCO_val2014_000000000328.jpg", None),
    ("ma_hands_on_hips.png", "magic-research/magic-animate",
     "inputs/applications/source_image/demo4.png", None),
    ("s1x_woman_flowers.jpg", "stepfun-ai/Step1X-Edit",
     "examples/0000.jpg", None),
    ("ma_dalle_meditation.jpg", "magic-research/magic-animate",
     "inputs/applications/source_image/dalle2.jpeg", None),
    ("sgm_girl3d.png", "Stability-AI/generative-models",
     "assets/000.jpg", (3246, 704, 4096, 2048)),
    ("cn_human_hand_on_head.png", "lllyasviel/ControlNet",
     "test_imgs/human.png", None),
    ("cn_pose1_hands_waist.png", "lllyasviel/ControlNet",
     "test_imgs/pose1.png", None),
    ("op_coco294_kitchen.jpg", "CMU-Perceptual-Computing-Lab/openpose",
     "examples/media/COCO_val2014_000000000294.jpg", None),
    ("op_coco395_phone.jpg", "CMU-Perceptual-Computing-Lab/openpose",
     "examples/media/COCO_val2014_000000000395.jpg", None),
    ("op_coco459_camera.jpg", "CMU-Perceptual-Computing-Lab/openpose",
     "examples/media/COCO_val2014_000000000459.jpg", None),
    ("op_coco428_baby_cake.jpg", "CMU-Perceptual-Computing-Lab/openpose",
     "examples/media/COCO_val2014_000000000428.jpg", None),
    ("sd_rick_mic.jpg", "Stability-AI/stablediffusion",
     "assets/rick.jpeg", None),
    ("ma_two_dancers.png", "magic-research/magic-animate",
     "inputs/applications/source_image/multi1_source.png", None),
]


if __name__ == "__main__":
    rebuild(COMMITS, ITEMS, os.environ["MIRROR"], sys.argv[1])
