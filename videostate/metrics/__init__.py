"""Metrics shared by the systems: image quality (PSNR, SSIM)."""

from .image import psnr, ssim, ssim_matlab

__all__ = ["psnr", "ssim", "ssim_matlab"]
