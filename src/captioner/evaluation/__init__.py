"""`captioner evaluate`: the coco-caption metrics, the evaluation folder, and human ratings of its captions."""
