"""ROI time series: multi-TR resampling and robust scaling."""

from brainharmony.timeseries.resample import Resampled, resample_to_tr, tr_label

__all__ = ["Resampled", "resample_to_tr", "tr_label"]
