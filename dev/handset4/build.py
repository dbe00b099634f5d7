"""Rebuilds the images of dev/handset4 (a fourth set of real-world images with hands, for measuring the hand
search; the images are not shipped: their licences vary and several show real people) from fetched bare git
mirrors: `MIRROR=/path/to/mirrors python dev/handset4/build.py OUT_DIR`, where a mirror of owner/name is
MIRROR/owner+name/repo (dev/handsets.py does the work)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from handsets import rebuild  # noqa: E402

# The commit of each source repository
COMMITS = {
    "MVIG-SJTU/AlphaPose": "c60106d19afb443e964df6f06ed1842962f5f1f7",
    "PaddlePaddle/PaddleDetection": "666f597fd00d3157e84dd9fb2dd3f40bf9918ebc",
    "InstantID/InstantID": "2145b67f9607da6234702063692330185f374486",
    "tencent-ailab/IP-Adapter": "62e4af9d0c1ac7d5f8dd386a0ccf2211346af1a2",
    "Fannovel16/comfyui_controlnet_aux": "e8b689a513c3e6b63edc44066560ca5919c0576e",
    "TencentARC/PhotoMaker": "060b4fcb10b76a4554edf565d6106b7e36c968f0",
    "TencentARC/T2I-Adapter": "77f72977c66f44f17a862c00a8797541dec274de",
    "Kwai-Kolors/Kolors": "0fafa56a76b7acf1e147b153d1e7b8fd65f9055b",
}
# file, repository, path, crop
ITEMS = [
    ("t2i_family_openpose.png", "TencentARC/T2I-Adapter", "assets/openpose.png", (1425, 168, 1865, 608)),
    ("t2i_anime_arms_up.png", "TencentARC/T2I-Adapter", "assets/keypose_anything.png", (636, 87, 931, 382)),
    ("ko_pose_woman3_sdxl_gloves.jpg", "Kwai-Kolors/Kolors", "controlnet/outputs/Pose_woman_3_sdxl.jpg", None),
    ("ipa_sd15_anime_girl.png", "tencent-ailab/IP-Adapter", "assets/demo/sd15_face.jpg", (2319, 1001, 3098, 1780)),
    ("ipa_anime_fox_girl.png", "tencent-ailab/IP-Adapter", "assets/demo/crop_and_resize_cmp.jpg",
     (1153, 731, 1586, 1381)),
    ("ipa_knight_woman.png", "tencent-ailab/IP-Adapter", "assets/images/woman.png", None),
    ("iid_kolor_sign_lecun.jpg", "InstantID/InstantID", "assets/kolor/demo_1.jpg", None),
    ("iid_kolor_sign_instantid.jpg", "InstantID/InstantID", "assets/kolor/demo_3.jpg", None),
    ("cna_logo_sign_girl.png", "Fannovel16/comfyui_controlnet_aux", "examples/comfyui-controlnet-aux-logo.png", None),
    ("t2i_anime_cool_man.png", "TencentARC/T2I-Adapter", "assets/keypose.PNG", (1703, 199, 2232, 729)),
    ("al_skiers.jpg", "MVIG-SJTU/AlphaPose", "examples/demo/1.jpg", None),
    ("al_kids_wall.jpg", "MVIG-SJTU/AlphaPose", "examples/demo/2.jpg", None),
    ("pd_coco14439_kite.jpg", "PaddlePaddle/PaddleDetection", "demo/000000014439.jpg", None),
    ("pd_coco87038_skater.jpg", "PaddlePaddle/PaddleDetection", "demo/000000087038.jpg", None),
    ("pd_hrnet_goalkeeper.jpg", "PaddlePaddle/PaddleDetection", "demo/hrnet_demo.jpg", None),
    ("iid_pose2_arms_out.jpg", "InstantID/InstantID", "examples/poses/pose2.jpg", None),
    ("iid_pose3_sitting.jpg", "InstantID/InstantID", "examples/poses/pose3.jpg", None),
    ("ipa_sd15_realistic_girl.png", "tencent-ailab/IP-Adapter", "assets/demo/sd15_face.jpg", (2319, 182, 3098, 962)),
    ("ko_pose_woman3_gloves.jpg", "Kwai-Kolors/Kolors", "controlnet/outputs/Pose_woman_3.jpg", None),
    ("ko_pose_woman4_hair.jpg", "Kwai-Kolors/Kolors", "controlnet/outputs/Pose_woman_4.jpg", None),
    ("iid_pose_jump.jpg", "InstantID/InstantID", "examples/poses/pose.jpg", None),
    ("iid_pose4_peace.jpg", "InstantID/InstantID", "examples/poses/pose4.jpg", None),
    ("iid_sam_arms_crossed.png", "InstantID/InstantID", "examples/sam_resize.png", None),
    ("pm_yangmi_chin.jpg", "TencentARC/PhotoMaker", "examples/yangmi_woman/yangmi_3.jpg", None),
    ("pm_yangmi_fingers.jpg", "TencentARC/PhotoMaker", "examples/yangmi_woman/yangmi_6.jpg", None),
]


if __name__ == "__main__":
    rebuild(COMMITS, ITEMS, os.environ["MIRROR"], sys.argv[1])
